import { runMain } from "../../platform/lifecycle/run-main.js";

/**
 * A launcher component that misbehaves on request, for the supervisor's tests: CRASHY_MODE
 * `fail-start` fails before it is ready; `crash` exits with code 3, CRASHY_AFTER_MS after it is ready.
 */
void runMain("crashy", async () => {
  if (process.env.CRASHY_MODE === "fail-start") throw new Error("refusing to start, as asked");
  if (process.env.CRASHY_MODE === "crash") setTimeout(() => process.exit(3), Number(process.env.CRASHY_AFTER_MS));
  return { endpoints: { crashy: "nowhere" }, stop: async () => undefined };
});
