/**
 * The components of the mesh and where they listen by default, declared once. Each process's
 * config, the launcher (which passes ports and targets to its children), the gateway (which finds
 * its upstreams) and the deployment tests (which check docker-compose.yml and deploy/k8s against
 * these numbers) all read them from here, so a port changes in one line.
 */
import { env, type Field } from "./env.js";

export interface Component {
  name: string;
  /** The port it listens on unless told otherwise. */
  port: number;
  /** The variables that override the interface it binds and its port. */
  hostVariable: string;
  portVariable: string;
  /** For a gRPC service other components call: the variable that tells them where it is. */
  targetVariable?: string;
}

export const components = {
  gateway: { name: "gateway", port: 8080, hostVariable: "GATEWAY_HOST", portVariable: "GATEWAY_PORT" },
  documents: {
    name: "documents",
    port: 50051,
    hostVariable: "DOCUMENTS_HOST",
    portVariable: "DOCUMENTS_PORT",
    targetVariable: "DOCUMENTS_TARGET",
  },
  identity: {
    name: "identity",
    port: 50052,
    hostVariable: "IDENTITY_HOST",
    portVariable: "IDENTITY_PORT",
    targetVariable: "IDENTITY_TARGET",
  },
  processing: { name: "processing", port: 50053, hostVariable: "PROCESSING_HOST", portVariable: "PROCESSING_PORT" },
  search: {
    name: "search",
    port: 50054,
    hostVariable: "SEARCH_HOST",
    portVariable: "SEARCH_PORT",
    targetVariable: "SEARCH_TARGET",
  },
  devices: {
    name: "devices",
    port: 50055,
    hostVariable: "DEVICES_HOST",
    portVariable: "DEVICES_PORT",
    targetVariable: "DEVICES_TARGET",
  },
  notifications: {
    name: "notifications",
    port: 50056,
    hostVariable: "NOTIFICATIONS_HOST",
    portVariable: "NOTIFICATIONS_PORT",
    targetVariable: "NOTIFICATIONS_TARGET",
  },
  /** The SMTP sink `npm start` runs so mail has somewhere to go (a mailbox under the data dir). */
  smtp: { name: "smtp", port: 2525, hostVariable: "SMTP_SINK_HOST", portVariable: "SMTP_SINK_PORT" },
  postgres: { name: "postgres", port: 54329, hostVariable: "EMBEDDED_PG_HOST", portVariable: "EMBEDDED_PG_PORT" },
  kafka: { name: "kafka", port: 9092, hostVariable: "KAFKA_HOST", portVariable: "KAFKA_PORT" },
} as const satisfies Record<string, Component>;

export type ComponentName = keyof typeof components;

/** Every component binds loopback by default: exposing one is a deliberate act (containers set 0.0.0.0). */
export const DEFAULT_HOST = "127.0.0.1";

/** A loopback host:port, as a gRPC target or a Kafka bootstrap address. */
export const loopbackAddress = (port: number): string => `${DEFAULT_HOST}:${port}`;

/** Where a component is found when nothing says otherwise: loopback, its declared port. */
export const defaultAddress = (c: Component): string => loopbackAddress(c.port);

type Target = Component & { targetVariable: string };

// The helpers below build config fields keyed by the declared variable names, typed so that
// `config.DOCUMENTS_PORT` is still a number to the compiler.

/** `<NAME>_HOST`: the interface the component binds, loopback by default. */
export function hostField<C extends Component>(c: C, describe: string): { [K in C["hostVariable"]]: Field<string> } {
  return { [c.hostVariable]: env.string(describe, DEFAULT_HOST) } as { [K in C["hostVariable"]]: Field<string> };
}

/** `<NAME>_PORT`: the port the component listens on, its declared port by default. */
export function portField<C extends Component>(c: C, describe: string): { [K in C["portVariable"]]: Field<number> } {
  return { [c.portVariable]: env.port(describe, c.port) } as { [K in C["portVariable"]]: Field<number> };
}

/** `<NAME>_TARGET`: where a caller finds the service, the service's default address by default. */
export function targetField<C extends Target>(c: C, describe: string): { [K in C["targetVariable"]]: Field<string> } {
  return { [c.targetVariable]: env.string(describe, defaultAddress(c)) } as {
    [K in C["targetVariable"]]: Field<string>;
  };
}
