/**
 * Registers (first run) and signs in the embedded default's bootstrap admin through the gateway
 * with plain Connect JSON; returns its access token.
 */
export async function signInBenchAdmin(gateway: string): Promise<string> {
  const call = (method: string, body: unknown) =>
    fetch(`${gateway}/medmesh.identity.v1.IdentityService/${method}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
  await call("Register", {
    email: "admin@medmesh.local",
    username: "benchadmin",
    password: "bench admin password",
    firstName: "Bench",
    lastName: "Admin",
  });
  const res = (await (
    await call("Login", { login: "admin@medmesh.local", password: "bench admin password" })
  ).json()) as { tokens?: { accessToken: string } };
  if (!res.tokens) throw new Error(`could not sign in: ${JSON.stringify(res)}`);
  return res.tokens.accessToken;
}
