import { ErrorCode } from "../protocol/errors.js";
import { Writer } from "../protocol/writer.js";
import { defineApi, type ApiHandler } from "./types.js";

export interface VersionRange {
  key: number;
  min: number;
  max: number;
}

/** Filled in by the registry so this module does not import every other API. */
export const advertised: VersionRange[] = [];

export const API_VERSIONS_KEY = 18;

/**
 * The answer to an ApiVersions request at a version we do not know: always the v0 layout, so the
 * client can read the error and our ranges whatever version it asked with.
 */
export function unsupportedApiVersionsBody(): Writer {
  const w = new Writer();
  w.int16(ErrorCode.UNSUPPORTED_VERSION);
  w.array(advertised, (w, a) => w.int16(a.key).int16(a.min).int16(a.max));
  return w;
}

export const apiVersionsApi: ApiHandler<{ clientSoftwareName?: string }> = defineApi({
  key: API_VERSIONS_KEY,
  name: "ApiVersions",
  minVersion: 0,
  maxVersion: 3,
  firstFlexibleVersion: 3,
  decode(r, version) {
    if (version < 3) return {};
    const clientSoftwareName = r.compactString();
    r.compactString();
    r.skipTaggedFields();
    return { clientSoftwareName };
  },
  handle(_req, ctx) {
    const v = ctx.apiVersion;
    const w = new Writer();
    w.int16(ErrorCode.NONE);
    if (v >= 3) {
      w.compactArray(advertised, (w, a) => w.int16(a.key).int16(a.min).int16(a.max).emptyTaggedFields());
      w.int32(0);
      w.emptyTaggedFields();
    } else {
      w.array(advertised, (w, a) => w.int16(a.key).int16(a.min).int16(a.max));
      if (v >= 1) w.int32(0);
    }
    return w;
  },
});
