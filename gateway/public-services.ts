import type { DescService } from "@bufbuild/protobuf";
import { DeviceService } from "../gen/medmesh/devices/v1/devices_pb.js";
import { DocumentService } from "../gen/medmesh/documents/v1/documents_pb.js";
import { IdentityService } from "../gen/medmesh/identity/v1/identity_pb.js";
import { NotificationService } from "../gen/medmesh/notifications/v1/notifications_pb.js";
import { SearchService } from "../gen/medmesh/search/v1/search_pb.js";
import { components, defaultAddress, type Component } from "../platform/config/components.js";
import { isPublicService } from "../platform/grpc/access-policy.js";

/**
 * Every medmesh service the gateway knows, with the component that serves it (its default
 * address and target variable are declared there). Which of them it exposes is decided by the
 * contract (the medmesh.access.v1.exposure service option).
 */
const known: Array<{ service: DescService; component: Component & { targetVariable: string } }> = [
  { service: DocumentService, component: components.documents },
  { service: IdentityService, component: components.identity },
  { service: SearchService, component: components.search },
  { service: DeviceService, component: components.devices },
  { service: NotificationService, component: components.notifications },
];

export const publicServices: DescService[] = known.map((k) => k.service).filter(isPublicService);

const componentOf = (service: DescService) => known.find((k) => k.service === service)?.component;

/** Where a known service listens by default; undefined for others (their target is required). */
export function defaultTarget(service: DescService): string | undefined {
  const c = componentOf(service);
  return c && defaultAddress(c);
}

/**
 * The environment variable naming a service's upstream: the one its component declares, else
 * derived from its package (medmesh.meshtest.v1.EchoService -> MESHTEST_TARGET) for services
 * only tests serve.
 */
export function targetVariable(service: DescService): string {
  const declared = componentOf(service)?.targetVariable;
  if (declared) return declared;
  const domain = service.typeName.split(".")[1] ?? service.name;
  return `${domain.toUpperCase()}_TARGET`;
}
