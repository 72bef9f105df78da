/**
 * Protobuf enum values by their short lower-case name ("research_paper", "admin"): how the mesh
 * stores enums in SQL and puts them in tokens and log lines, readable and independent of the
 * proto numbering. protoc-gen-es already strips the enum's prefix from its TypeScript keys.
 */
export interface EnumNames<V extends number> {
  /** The stored name of a value; the zero value has none and throws (a bug, not bad input). */
  name(value: V): string;
  /** The value of a stored name, or the zero value (UNSPECIFIED) for a name the enum lacks. */
  value(name: string): V;
  /** The stored name, or `fallback` where the value has none (for sentences and labels). */
  label(value: V, fallback?: string): string;
}

export function enumNames<V extends number>(e: Record<string, string | number>, typeName: string): EnumNames<V> {
  const byValue = e as unknown as Record<number, string | undefined>;
  const byName = e as Record<string, string | number | undefined>;
  return {
    name(value) {
      const key = byValue[value];
      if (!key || value === 0) throw new Error(`${typeName} ${value} has no stored name`);
      return key.toLowerCase();
    },
    value(name) {
      const v = byName[name.toUpperCase()];
      return (typeof v === "number" ? v : 0) as V;
    },
    label(value, fallback = "unknown") {
      return byValue[value]?.toLowerCase() ?? fallback;
    },
  };
}
