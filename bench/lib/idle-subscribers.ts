/**
 * Holds idle Subscribe streams from a process of its own, so the notifications bench can weigh
 * what each costs the server alone. Started by bench/notifications.ts with the target and the
 * users; prints "open" once every stream has its backlog, then holds them until killed.
 */
import { NotificationService } from "../../gen/medmesh/notifications/v1/notifications_pb.js";
import { createMeshClient } from "../../platform/grpc/client.js";

const [target, usersCsv] = process.argv.slice(2);
const users = usersCsv!.split(",");
const client = createMeshClient(NotificationService, target!, { defaultTimeoutMs: 3_600_000 });
let backlog = 0;
for (const u of users) {
  void (async () => {
    try {
      for await (const _ of client.subscribe({}, { headers: { "x-bench-user": u }, timeoutMs: 3_600_000 })) backlog++;
    } catch {
      // ended when the bench kills this process
    }
  })();
}
const poll = setInterval(() => {
  if (backlog >= users.length) {
    clearInterval(poll);
    process.stdout.write("open\n");
  }
}, 20);
