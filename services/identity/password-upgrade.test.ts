import { create } from "@bufbuild/protobuf";
import type { HandlerContext } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { LoginRequestSchema, RegisterRequestSchema } from "../../gen/medmesh/identity/v1/identity_pb.js";
import { openServiceDatabase, type Database } from "../../platform/db/database.js";
import { backends } from "../../test/support/backends.js";
import { SigningKeyRing } from "./keys.js";
import { migrations } from "./migrations/index.js";
import { identityService } from "./service.js";
import { IdentityStore } from "./store.js";
import type { IdentityDB } from "./tables.js";

// Raising IDENTITY_SCRYPT_LOG_N must not lock anyone out, and must reach the hashes already stored.
// Two instances of the service share one database, one configured with a lower cost than the
// other, as before and after a configuration change. Costs 12 and 14 stand in for the 2^15 and
// 2^17 of production, which would only make the test slower; the handlers are called in process
// (the gRPC path has its own tests in service.test.ts).
describe.each(backends())("password hashes on $name", (backend) => {
  let database: Database<IdentityDB>;
  let store: IdentityStore;
  let keys: SigningKeyRing;
  const ctx = {} as HandlerContext;

  beforeAll(async () => {
    database = await openServiceDatabase<IdentityDB>(
      "identity",
      {
        DATABASE_URL: backend.env.DATABASE_URL,
        MEDMESH_DATA_DIR: backend.env.MEDMESH_DATA_DIR ?? "memory://",
        DB_POOL_MAX: 2,
      },
      `identity_p${backend.env.DOCUMENTS_DB_SCHEMA!.slice(-8)}`,
      migrations,
    );
    store = new IdentityStore(database.db);
    keys = new SigningKeyRing(store, { now: () => new Date(), rotateAfterMs: 0 });
    await keys.start();
  });
  afterAll(async () => {
    await database?.close();
  });

  const serviceAt = (logN: number) => identityService({ store, keys, scrypt: { logN, r: 8, p: 1 } });
  const storedHash = async (login: string) => (await store.userByLogin(login))!.password_hash;

  it("verifies a hash made with weaker parameters, and stores one with the current parameters at sign-in", async () => {
    const password = "correct horse battery staple";
    const username = `upgrade_${Date.now().toString(36)}`;
    await serviceAt(12).register!(
      create(RegisterRequestSchema, {
        email: `${username}@example.org`,
        username,
        password,
        firstName: "A",
        lastName: "B",
      }),
      ctx,
    );
    const before = await storedHash(username);
    expect(before).toMatch(/^scrypt\$ln=12,r=8,p=1\$/);

    const current = serviceAt(14);
    const signIn = async (pw: string) =>
      (await current.login!(create(LoginRequestSchema, { login: username, password: pw }), ctx)).result?.case;
    // A wrong password changes nothing.
    await expect(signIn("not the password")).rejects.toThrow();
    expect(await storedHash(username)).toBe(before);
    // The right one signs in against the old hash, and leaves a hash with the current parameters.
    expect(await signIn(password)).toBe("tokens");
    const after = await storedHash(username);
    expect(after).toMatch(/^scrypt\$ln=14,r=8,p=1\$/);

    // The new hash verifies in its turn, and is left alone now that it is current.
    expect(await signIn(password)).toBe("tokens");
    expect(await storedHash(username)).toBe(after);
  });
});
