import type { DescService } from "@bufbuild/protobuf";
import { DocumentService } from "../gen/medmesh/documents/v1/documents_pb.js";
import { IdentityService } from "../gen/medmesh/identity/v1/identity_pb.js";
import { isPublicService } from "../platform/grpc/access-policy.js";

/**
 * Every medmesh service the gateway knows, with where it listens by default. Which of them
 * it exposes is decided by the contract (the medmesh.access.v1.exposure service option).
 */
const known: Array<{ service: DescService; defaultTarget: string }> = [
  { service: DocumentService, defaultTarget: "127.0.0.1:50051" },
  { service: IdentityService, defaultTarget: "127.0.0.1:50052" },
];

export const publicServices: DescService[] = known.map((k) => k.service).filter(isPublicService);

export function defaultTarget(service: DescService): string {
  return known.find((k) => k.service === service)?.defaultTarget ?? "127.0.0.1:50051";
}

/**
 * The environment variable naming a service's upstream, derived from its package:
 * medmesh.documents.v1.DocumentService -> DOCUMENTS_TARGET.
 */
export function targetVariable(service: DescService): string {
  const domain = service.typeName.split(".")[1] ?? service.name;
  return `${domain.toUpperCase()}_TARGET`;
}
