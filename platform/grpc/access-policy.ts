import { getOption, hasOption, type DescMethod, type DescService } from "@bufbuild/protobuf";
import {
  Audience,
  Exposure,
  exposure,
  policy as policyExtension,
  type Policy,
} from "../../gen/medmesh/access/v1/access_pb.js";

export type { Policy };

/** The access policy the contract declares on a method, or undefined when it declares none. */
export function policyOf(method: DescMethod): Policy | undefined {
  // Read on every call by the access interceptor; decoding the option each time would be waste.
  if (!policies.has(method))
    policies.set(method, hasOption(method, policyExtension) ? getOption(method, policyExtension) : undefined);
  return policies.get(method);
}

const policies = new WeakMap<DescMethod, Policy | undefined>();

/** Methods whose contract forgot the policy option; the mesh refuses to serve them. */
export function methodsWithoutPolicy(services: DescService[]): string[] {
  const missing: string[] = [];
  for (const s of services) {
    for (const m of s.methods) {
      const p = policyOf(m);
      if (!p || p.audience === Audience.UNSPECIFIED) missing.push(`${s.typeName}/${m.name}`);
    }
  }
  return missing;
}

export function isPublicService(service: DescService): boolean {
  return hasOption(service, exposure) && getOption(service, exposure) === Exposure.PUBLIC;
}
