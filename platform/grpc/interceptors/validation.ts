import { hasOption, type DescField, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { createValidator } from "@bufbuild/protovalidate";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { pathToString } from "@bufbuild/protobuf/reflect";
import {
  field as fieldRules,
  message as messageRules,
  oneof as oneofRules,
} from "../../../gen/buf/validate/validate_pb.js";
import { invalidArgument } from "../errors.js";

const validator = createValidator();

/**
 * A hand-written test that a message keeps every rule its type declares, for a hot message type
 * where walking the rules reflectively is a visible share of the work. It may answer false for a
 * valid message (protovalidate then decides) but must never answer true for an invalid one: a
 * message it passes is not validated again. Refusals always come from protovalidate, so their
 * statuses and sentences are the same with or without a shortcut.
 */
export type ValidationShortcut = (message: never) => boolean;
export type ValidationShortcuts = ReadonlyMap<DescMessage, ValidationShortcut>;

const noShortcuts: ValidationShortcuts = new Map();

/** Enforces the buf.validate rules of the contract on every request message, streamed or not. */
export function validationInterceptor(shortcuts: ValidationShortcuts = noShortcuts): Interceptor {
  return (next) => (req) => {
    const schema = req.method.input;
    if (!hasRules(schema)) return next(req);
    const plainlyValid = shortcuts.get(schema) as ((m: unknown) => boolean) | undefined;
    if (!req.stream) {
      try {
        if (!plainlyValid?.(req.message)) check(schema, req.message);
      } catch (err) {
        return Promise.reject(err);
      }
      return next(req);
    }
    const input = req.message;
    const checked: AsyncIterable<unknown> = {
      async *[Symbol.asyncIterator]() {
        for await (const m of input) {
          if (!plainlyValid?.(m)) check(schema, m as MessageShape<DescMessage>);
          yield m;
        }
      },
    };
    // Not a spread: the adapter's requests read their headers and signal through getters.
    return next(Object.create(req, { message: { value: checked } }) as typeof req);
  };
}

export function check(schema: DescMessage, message: MessageShape<DescMessage>): void {
  const result = validator.validate(schema, message);
  if (result.kind === "valid") return;
  if (result.kind === "error") {
    throw new ConnectError(`the request could not be validated: ${result.error.message}`, Code.Internal);
  }
  throw invalidArgument(
    result.violations.map((v) => ({
      field: pathToString(v.field) || "(request)",
      description: v.message || v.ruleId,
    })),
  );
}

const withRules = new WeakMap<DescMessage, boolean>();

/**
 * Whether a message type, or any message it contains, carries a buf.validate rule. A request
 * type without one is valid whatever it holds, so validating it would be work that never fails;
 * the answer is worked out once per type.
 */
export function hasRules(schema: DescMessage): boolean {
  let known = withRules.get(schema);
  if (known === undefined) withRules.set(schema, (known = declaresRules(schema, new Set())));
  return known;
}

function declaresRules(schema: DescMessage, seen: Set<DescMessage>): boolean {
  if (seen.has(schema)) return false;
  seen.add(schema);
  if (hasOption(schema, messageRules)) return true;
  if (schema.oneofs.some((o) => hasOption(o, oneofRules))) return true;
  return schema.fields.some((f) => hasOption(f, fieldRules) || nestedRules(f, seen));
}

function nestedRules(f: DescField, seen: Set<DescMessage>): boolean {
  const nested =
    f.fieldKind === "message"
      ? f.message
      : f.fieldKind === "list" && f.listKind === "message"
        ? f.message
        : f.fieldKind === "map" && f.mapKind === "message"
          ? f.message
          : undefined;
  return nested !== undefined && declaresRules(nested, seen);
}
