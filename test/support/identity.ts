import { Role } from "../../gen/medmesh/access/v1/access_pb.js";
import { IdentityService, PrincipalKind } from "../../gen/medmesh/identity/v1/identity_pb.js";
import { createMeshClient } from "../../platform/grpc/client.js";
import { startIdentity } from "../../services/identity/main.js";
import { testEnv } from "./backends.js";

export type Persona = "admin" | "doctor" | "researcher" | "student" | "doctor2";

export interface TestIdentity {
  /** host:port of the identity service, for IDENTITY_TARGET. */
  target: string;
  /** A fresh access token for the persona (signed in once, cached). */
  token(who: Persona): Promise<string>;
  /** The persona's user id: the `uploaded_by` of what it creates. */
  userId(who: Persona): Promise<string>;
  bearer(who: Persona): Promise<{ authorization: string }>;
  /** A service principal's headers: an admin-made API key of kind service, exchanged as services do. */
  serviceBearer(name?: string): Promise<{ authorization: string }>;
  /** A new API key of kind service, made by the admin: what a worker process is configured with. */
  serviceApiKey(name: string): Promise<string>;
  stop(): Promise<void>;
}

const roles: Record<Persona, Role> = {
  admin: Role.ADMIN,
  doctor: Role.DOCTOR,
  doctor2: Role.DOCTOR,
  researcher: Role.RESEARCHER,
  student: Role.STUDENT,
};

const password = "a long test password";

/**
 * A real identity service for tests of other services: people sign up and in through its RPCs
 * exactly as users do, and the first admin comes from the bootstrap address.
 */
export async function startTestIdentity(env: Record<string, string> = {}): Promise<TestIdentity> {
  const svc = await startIdentity({
    ...testEnv,
    MEDMESH_DATA_DIR: "memory://",
    IDENTITY_PORT: "0",
    IDENTITY_SCRYPT_LOG_N: "14",
    IDENTITY_BOOTSTRAP_ADMIN_EMAIL: "admin@medmesh.test",
    // Many people sign in from one test process; rate limits have tests of their own.
    RATE_LIMITS: "read=100000:100000,write=100000:100000,auth=100000:100000",
    ...env,
  });
  const target = `127.0.0.1:${svc.port}`;
  const client = createMeshClient(IdentityService, target, { defaultTimeoutMs: 10_000 });
  const ids = new Map<Persona, string>();
  const tokens = new Map<Persona, string>();
  const serviceTokens = new Map<string, string>();

  async function signIn(who: Persona): Promise<string> {
    const res = await client.login({ login: `${who}@medmesh.test`, password });
    if (res.result.case !== "tokens") throw new Error(`${who} did not get tokens`);
    return res.result.value.accessToken;
  }

  async function ensure(who: Persona): Promise<void> {
    if (ids.has(who)) return;
    if (who !== "admin") await ensure("admin");
    const { user } = await client.register({
      email: `${who}@medmesh.test`,
      username: who,
      password,
      firstName: who,
      lastName: "Test",
    });
    ids.set(who, user!.id);
    if (who !== "admin" && roles[who] !== Role.STUDENT) {
      await client.setRole(
        { userId: user!.id, role: roles[who] },
        { headers: { authorization: `Bearer ${tokens.get("admin")}` } },
      );
    }
    tokens.set(who, await signIn(who));
  }

  async function serviceApiKey(name: string): Promise<string> {
    await ensure("admin");
    return (
      await client.createApiKey(
        { name, kind: PrincipalKind.SERVICE },
        { headers: { authorization: `Bearer ${tokens.get("admin")}` } },
      )
    ).key;
  }

  return {
    target,
    async token(who) {
      await ensure(who);
      return tokens.get(who)!;
    },
    async userId(who) {
      await ensure(who);
      return ids.get(who)!;
    },
    async bearer(who) {
      await ensure(who);
      return { authorization: `Bearer ${tokens.get(who)}` };
    },
    serviceApiKey,
    async serviceBearer(name = "processing") {
      let token = serviceTokens.get(name);
      if (!token) {
        const key = await serviceApiKey(name);
        token = (await client.exchangeApiKey({ apiKey: key })).accessToken;
        serviceTokens.set(name, token);
      }
      return { authorization: `Bearer ${token}` };
    },
    async stop() {
      client.close();
      await svc.stop();
    },
  };
}
