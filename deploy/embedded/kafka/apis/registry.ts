import { advertised, apiVersionsApi } from "./api-versions.js";
import { createTopicsApi } from "./create-topics.js";
import { deleteTopicsApi } from "./delete-topics.js";
import { describeGroupsApi } from "./describe-groups.js";
import { fetchApi } from "./fetch.js";
import { findCoordinatorApi } from "./find-coordinator.js";
import { heartbeatApi } from "./heartbeat.js";
import { initProducerIdApi } from "./init-producer-id.js";
import { joinGroupApi } from "./join-group.js";
import { leaveGroupApi } from "./leave-group.js";
import { listGroupsApi } from "./list-groups.js";
import { listOffsetsApi } from "./list-offsets.js";
import { metadataApi } from "./metadata.js";
import { offsetCommitApi } from "./offset-commit.js";
import { offsetFetchApi } from "./offset-fetch.js";
import { produceApi } from "./produce.js";
import { syncGroupApi } from "./sync-group.js";
import type { ApiHandler } from "./types.js";

// Handlers are declared with method syntax, so each ApiHandler<Req> is assignable to this.
type AnyApi = ApiHandler<unknown>;

const ALL: AnyApi[] = [
  produceApi,
  fetchApi,
  listOffsetsApi,
  metadataApi,
  offsetCommitApi,
  offsetFetchApi,
  findCoordinatorApi,
  joinGroupApi,
  heartbeatApi,
  leaveGroupApi,
  syncGroupApi,
  describeGroupsApi,
  listGroupsApi,
  apiVersionsApi,
  createTopicsApi,
  deleteTopicsApi,
  initProducerIdApi,
];

export const apisByKey = new Map<number, AnyApi>(ALL.map((a) => [a.key, a]));

advertised.push(
  ...ALL.map((a) => ({ key: a.key, min: a.minVersion, max: a.maxVersion })).sort((a, b) => a.key - b.key),
);
