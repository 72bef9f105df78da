import { createHash } from "node:crypto";
import { Code, ConnectError } from "@connectrpc/connect";

/**
 * Opaque cursor tokens. A token remembers where the previous page stopped and a digest of the
 * filters it was issued for: reusing it with other filters would silently give wrong pages,
 * so that is refused.
 */
function filterDigest(filters: unknown): string {
  return createHash("sha256").update(JSON.stringify(filters)).digest("base64url").slice(0, 16);
}

export function encodePageToken(position: number, filters: unknown): string {
  return Buffer.from(JSON.stringify({ v: 1, p: position, f: filterDigest(filters) })).toString("base64url");
}

export function decodePageToken(token: string, filters: unknown): number | undefined {
  if (token === "") return undefined;
  let parsed: { v?: unknown; p?: unknown; f?: unknown };
  try {
    parsed = JSON.parse(Buffer.from(token, "base64url").toString("utf8"));
  } catch {
    throw new ConnectError("page_token is not a token issued by this service", Code.InvalidArgument);
  }
  if (
    parsed?.v !== 1 ||
    typeof parsed.p !== "number" ||
    !Number.isSafeInteger(parsed.p) ||
    typeof parsed.f !== "string"
  ) {
    throw new ConnectError("page_token is not a token issued by this service", Code.InvalidArgument);
  }
  if (parsed.f !== filterDigest(filters)) {
    throw new ConnectError("page_token was issued for different filters; start again without it", Code.InvalidArgument);
  }
  return parsed.p;
}
