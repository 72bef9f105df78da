import type { DescService } from "@bufbuild/protobuf";
import { DocumentService } from "../gen/medmesh/documents/v1/documents_pb.js";
import { isPublicService } from "../platform/grpc/access-policy.js";

/**
 * Every medmesh service the gateway knows. Which of them it exposes is decided by the
 * contract (the medmesh.access.v1.exposure service option), not here.
 */
const known: DescService[] = [DocumentService];

export const publicServices: DescService[] = known.filter(isPublicService);

/**
 * The environment variable naming a service's upstream, derived from its package:
 * medmesh.documents.v1.DocumentService -> DOCUMENTS_TARGET.
 */
export function targetVariable(service: DescService): string {
  const domain = service.typeName.split(".")[1] ?? service.name;
  return `${domain.toUpperCase()}_TARGET`;
}
