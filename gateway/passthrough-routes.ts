import type { DescMethod, DescService } from "@bufbuild/protobuf";
import { RateClass, type Policy } from "../gen/medmesh/access/v1/access_pb.js";
import { policyOf } from "../platform/grpc/access-policy.js";

/** Everything the pass-through needs of a method, worked out once from its descriptor. */
export interface PassRoute {
  path: string;
  /** "<package.Service>/<Method>": span name, metric and log label. */
  rpc: string;
  service: string;
  method: string;
  policy: Policy | undefined;
  rateClass: RateClass;
  /** Only unary calls get the mesh's default deadline and have longer ones clamped. */
  unary: boolean;
  /** Client and bidi streams: the end of their request is held back a moment (see passthrough.ts). */
  streamedRequest: boolean;
  target: string;
  /** The method itself: the Connect transcoder reads and writes its messages. */
  desc: DescMethod;
  /**
   * Credential calls (rate class AUTH): their rate limit reads the account the message names, so
   * their body must be decoded before they may go on.
   */
  readsMessage: boolean;
  spanAttributes: Record<string, string>;
  /** Of the span of the hop to the service, where the gateway is the client (the Connect path). */
  clientSpanAttributes: Record<string, string>;
}

/**
 * Every method of the exposed services, by request path, worked out once. Their gRPC and gRPC-web
 * calls are passed through undecoded, except credential calls (readsMessage): their rate limit
 * reads the account the message names, so those keep going through a decoding path.
 */
export function passRoutes(upstreams: Array<{ service: DescService; target: string }>): Map<string, PassRoute> {
  const routes = new Map<string, PassRoute>();
  for (const { service, target } of upstreams) {
    for (const m of service.methods) {
      const policy = policyOf(m);
      const rateClass = policy?.rateClass ?? RateClass.UNSPECIFIED;
      const path = `/${service.typeName}/${m.name}`;
      routes.set(path, {
        path,
        rpc: `${service.typeName}/${m.name}`,
        service: service.typeName,
        method: m.name,
        policy,
        rateClass,
        unary: m.methodKind === "unary",
        streamedRequest: m.methodKind === "client_streaming" || m.methodKind === "bidi_streaming",
        target,
        desc: m,
        readsMessage: rateClass === RateClass.AUTH,
        spanAttributes: {
          "rpc.system": "grpc",
          "rpc.service": service.typeName,
          "rpc.method": m.name,
          "medmesh.component": "gateway",
        },
        clientSpanAttributes: { "rpc.system": "grpc", "rpc.service": service.typeName, "rpc.method": m.name },
      });
    }
  }
  return routes;
}
