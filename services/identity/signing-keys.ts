import { create } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import { JwkSchema, type IdentityService } from "../../gen/medmesh/identity/v1/identity_pb.js";
import { callerOf } from "../../platform/grpc/caller.js";
import type { IdentityContext } from "./context.js";

type Handlers = Pick<ServiceImpl<typeof IdentityService>, "getJwks" | "rotateSigningKey">;

/** The RPC face of the key ring (keys.ts), which does the work. */
export function signingKeyHandlers({ keys, audit }: IdentityContext): Handlers {
  return {
    async getJwks() {
      const jwks = await keys.jwks();
      return { jwksJson: JSON.stringify(jwks), keys: jwks.keys.map((k) => create(JwkSchema, k)) };
    },

    async rotateSigningKey(_req, ctx) {
      const kid = await keys.rotate();
      await audit({ event: "signing_key_rotated", actor: callerOf(ctx).subject, details: { kid } });
      return { kid };
    },
  };
}
