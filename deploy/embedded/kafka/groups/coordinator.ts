import { randomUUID } from "node:crypto";
import { ErrorCode } from "../protocol/errors.js";
import type { Logger } from "../logger.js";

export type GroupState = "Empty" | "PreparingRebalance" | "CompletingRebalance" | "Stable" | "Dead";

export interface ProtocolOffer {
  name: string;
  metadata: Buffer;
}

export interface JoinRequest {
  groupId: string;
  sessionTimeoutMs: number;
  rebalanceTimeoutMs: number;
  memberId: string;
  groupInstanceId: string | null;
  protocolType: string;
  protocols: ProtocolOffer[];
  clientId: string;
  clientHost: string;
  /** JoinGroup v4+: a first join without a member id is answered with MEMBER_ID_REQUIRED. */
  requireKnownMemberId: boolean;
}

export interface JoinResult {
  errorCode: number;
  generationId: number;
  protocolName: string;
  leaderId: string;
  memberId: string;
  members: { memberId: string; groupInstanceId: string | null; metadata: Buffer }[];
}

export interface SyncResult {
  errorCode: number;
  assignment: Buffer;
}

class Member {
  assignment: Buffer = Buffer.alloc(0);
  joinWaiter: ((r: JoinResult) => void) | null = null;
  syncWaiter: ((r: SyncResult) => void) | null = null;
  sessionTimer: NodeJS.Timeout | null = null;

  constructor(
    readonly id: string,
    readonly groupInstanceId: string | null,
    readonly clientId: string,
    readonly clientHost: string,
    public sessionTimeoutMs: number,
    public rebalanceTimeoutMs: number,
    public protocols: ProtocolOffer[],
  ) {}

  metadataFor(protocol: string | null): Buffer {
    return this.protocols.find((p) => p.name === protocol)?.metadata ?? Buffer.alloc(0);
  }
}

class Group {
  state: GroupState = "Empty";
  generation = 0;
  protocolType: string | null = null;
  protocolName: string | null = null;
  leaderId: string | null = null;
  readonly members = new Map<string, Member>();
  /** Member ids handed out with MEMBER_ID_REQUIRED that have not joined yet, with their expiry. */
  readonly pending = new Map<string, NodeJS.Timeout>();
  rebalanceTimer: NodeJS.Timeout | null = null;
  initialDelayUntil = 0;

  constructor(readonly id: string) {}
}

export interface CoordinatorOptions {
  minSessionTimeoutMs: number;
  maxSessionTimeoutMs: number;
  /** Like Kafka's group.initial.rebalance.delay.ms: wait this long for more members of a new group. */
  initialRebalanceDelayMs: number;
}

const EMPTY = Buffer.alloc(0);

function sameProtocols(a: ProtocolOffer[], b: ProtocolOffer[]): boolean {
  return a.length === b.length && a.every((p, i) => p.name === b[i]!.name && p.metadata.equals(b[i]!.metadata));
}

/**
 * The classic consumer group protocol (JoinGroup/SyncGroup/Heartbeat/LeaveGroup) for every group, with
 * the same states and error codes as Kafka's GroupCoordinator so unmodified clients rebalance correctly.
 */
export class GroupCoordinator {
  private groups = new Map<string, Group>();
  private closed = false;

  constructor(
    private readonly opts: CoordinatorOptions,
    private readonly logger: Logger,
  ) {}

  join(req: JoinRequest): Promise<JoinResult> {
    const fail = (errorCode: number, memberId = req.memberId): Promise<JoinResult> =>
      Promise.resolve({ errorCode, generationId: -1, protocolName: "", leaderId: "", memberId, members: [] });

    if (this.closed) return fail(ErrorCode.COORDINATOR_NOT_AVAILABLE);
    if (req.groupId === "") return fail(ErrorCode.INVALID_GROUP_ID);
    if (req.sessionTimeoutMs < this.opts.minSessionTimeoutMs || req.sessionTimeoutMs > this.opts.maxSessionTimeoutMs) {
      return fail(ErrorCode.INVALID_SESSION_TIMEOUT);
    }
    let group = this.groups.get(req.groupId);
    if (!group) {
      if (req.memberId !== "") return fail(ErrorCode.UNKNOWN_MEMBER_ID);
      group = new Group(req.groupId);
      this.groups.set(req.groupId, group);
    }
    if (!this.acceptsProtocols(group, req.protocolType, req.protocols))
      return fail(ErrorCode.INCONSISTENT_GROUP_PROTOCOL);

    if (req.memberId === "") {
      const memberId = `${req.clientId || "member"}-${randomUUID()}`;
      if (req.requireKnownMemberId) {
        const g = group;
        const expiry = setTimeout(() => {
          g.pending.delete(memberId);
          this.maybeCompleteJoin(g);
        }, req.sessionTimeoutMs);
        expiry.unref();
        group.pending.set(memberId, expiry);
        return fail(ErrorCode.MEMBER_ID_REQUIRED, memberId);
      }
      return this.addMemberAndRebalance(group, memberId, req);
    }

    const pendingTimer = group.pending.get(req.memberId);
    if (pendingTimer) {
      clearTimeout(pendingTimer);
      group.pending.delete(req.memberId);
      return this.addMemberAndRebalance(group, req.memberId, req);
    }

    const member = group.members.get(req.memberId);
    if (!member) return fail(ErrorCode.UNKNOWN_MEMBER_ID);

    switch (group.state) {
      case "PreparingRebalance":
        return this.updateMemberAndRebalance(group, member, req);
      case "CompletingRebalance":
        // Same metadata: the member probably lost our previous answer, so repeat it.
        if (sameProtocols(member.protocols, req.protocols)) return Promise.resolve(this.joinResultFor(group, member));
        return this.updateMemberAndRebalance(group, member, req);
      case "Stable":
        if (member.id === group.leaderId || !sameProtocols(member.protocols, req.protocols)) {
          return this.updateMemberAndRebalance(group, member, req);
        }
        return Promise.resolve(this.joinResultFor(group, member));
      default:
        return fail(ErrorCode.UNKNOWN_MEMBER_ID);
    }
  }

  sync(groupId: string, generationId: number, memberId: string, assignments: Map<string, Buffer>): Promise<SyncResult> {
    const fail = (errorCode: number): Promise<SyncResult> => Promise.resolve({ errorCode, assignment: EMPTY });
    if (this.closed) return fail(ErrorCode.COORDINATOR_NOT_AVAILABLE);
    const group = this.groups.get(groupId);
    const member = group?.members.get(memberId);
    if (!group || !member) return fail(ErrorCode.UNKNOWN_MEMBER_ID);
    if (generationId !== group.generation) return fail(ErrorCode.ILLEGAL_GENERATION);
    switch (group.state) {
      case "PreparingRebalance":
        return fail(ErrorCode.REBALANCE_IN_PROGRESS);
      case "Stable":
        this.scheduleSessionExpiry(group, member);
        return Promise.resolve({ errorCode: ErrorCode.NONE, assignment: member.assignment });
      case "CompletingRebalance":
        return new Promise((resolve) => {
          member.syncWaiter = resolve;
          this.scheduleSessionExpiry(group, member);
          if (member.id === group.leaderId) {
            for (const m of group.members.values()) m.assignment = assignments.get(m.id) ?? EMPTY;
            group.state = "Stable";
            for (const m of group.members.values()) {
              const w = m.syncWaiter;
              m.syncWaiter = null;
              w?.({ errorCode: ErrorCode.NONE, assignment: m.assignment });
            }
          }
        });
      default:
        return fail(ErrorCode.UNKNOWN_MEMBER_ID);
    }
  }

  heartbeat(groupId: string, generationId: number, memberId: string): number {
    if (this.closed) return ErrorCode.COORDINATOR_NOT_AVAILABLE;
    const group = this.groups.get(groupId);
    const member = group?.members.get(memberId);
    if (!group || !member) return ErrorCode.UNKNOWN_MEMBER_ID;
    if (generationId !== group.generation) return ErrorCode.ILLEGAL_GENERATION;
    switch (group.state) {
      case "PreparingRebalance":
        this.scheduleSessionExpiry(group, member);
        return ErrorCode.REBALANCE_IN_PROGRESS;
      case "CompletingRebalance":
        // The member has joined this generation and waits for its assignment: that is healthy
        // (Kafka 2.3+ answers NONE here; REBALANCE_IN_PROGRESS would make it rejoin needlessly).
        this.scheduleSessionExpiry(group, member);
        return ErrorCode.NONE;
      case "Stable":
        this.scheduleSessionExpiry(group, member);
        return ErrorCode.NONE;
      default:
        return ErrorCode.UNKNOWN_MEMBER_ID;
    }
  }

  /** Returns one error code per member id, in order. */
  leave(groupId: string, memberIds: string[]): number[] {
    const group = this.groups.get(groupId);
    return memberIds.map((id) => {
      if (!group) return ErrorCode.UNKNOWN_MEMBER_ID;
      const pending = group.pending.get(id);
      if (pending) {
        clearTimeout(pending);
        group.pending.delete(id);
        this.maybeCompleteJoin(group);
        return ErrorCode.NONE;
      }
      const member = group.members.get(id);
      if (!member) return ErrorCode.UNKNOWN_MEMBER_ID;
      this.removeMember(group, member, "left");
      return ErrorCode.NONE;
    });
  }

  /** Rules Kafka applies before accepting an OffsetCommit from a group. */
  validateCommit(groupId: string, generationId: number, memberId: string): number {
    if (this.closed) return ErrorCode.COORDINATOR_NOT_AVAILABLE;
    const group = this.groups.get(groupId);
    if (!group) return generationId < 0 ? ErrorCode.NONE : ErrorCode.ILLEGAL_GENERATION;
    if (generationId < 0 && group.state === "Empty") return ErrorCode.NONE;
    if (group.state === "CompletingRebalance") return ErrorCode.REBALANCE_IN_PROGRESS;
    if (!group.members.has(memberId)) return ErrorCode.UNKNOWN_MEMBER_ID;
    if (generationId !== group.generation) return ErrorCode.ILLEGAL_GENERATION;
    return ErrorCode.NONE;
  }

  describe(groupId: string): {
    state: GroupState;
    protocolType: string;
    protocolName: string;
    members: { memberId: string; clientId: string; clientHost: string; metadata: Buffer; assignment: Buffer }[];
  } {
    const group = this.groups.get(groupId);
    if (!group) return { state: "Dead", protocolType: "", protocolName: "", members: [] };
    return {
      state: group.state,
      protocolType: group.protocolType ?? "",
      protocolName: group.state === "Stable" ? (group.protocolName ?? "") : "",
      members: [...group.members.values()].map((m) => ({
        memberId: m.id,
        clientId: m.clientId,
        clientHost: m.clientHost,
        metadata: m.metadataFor(group.protocolName),
        assignment: group.state === "Stable" ? m.assignment : EMPTY,
      })),
    };
  }

  list(): { groupId: string; protocolType: string; state: GroupState }[] {
    return [...this.groups.values()].map((g) => ({
      groupId: g.id,
      protocolType: g.protocolType ?? "",
      state: g.state,
    }));
  }

  close(): void {
    this.closed = true;
    for (const g of this.groups.values()) {
      if (g.rebalanceTimer) clearTimeout(g.rebalanceTimer);
      for (const t of g.pending.values()) clearTimeout(t);
      for (const m of g.members.values()) {
        if (m.sessionTimer) clearTimeout(m.sessionTimer);
        m.joinWaiter?.({
          errorCode: ErrorCode.NOT_COORDINATOR,
          generationId: -1,
          protocolName: "",
          leaderId: "",
          memberId: m.id,
          members: [],
        });
        m.syncWaiter?.({ errorCode: ErrorCode.NOT_COORDINATOR, assignment: EMPTY });
        m.joinWaiter = null;
        m.syncWaiter = null;
      }
    }
  }

  private acceptsProtocols(group: Group, protocolType: string, protocols: ProtocolOffer[]): boolean {
    if (protocolType === "" || protocols.length === 0) return false;
    if (group.members.size === 0) return true;
    if (protocolType !== group.protocolType) return false;
    const common = this.commonProtocols(group);
    return protocols.some((p) => common.has(p.name));
  }

  private commonProtocols(group: Group): Set<string> {
    const members = [...group.members.values()];
    const first = members[0];
    if (!first) return new Set<string>();
    const common = new Set<string>(first.protocols.map((p) => p.name));
    for (const m of members.slice(1)) {
      const names = new Set<string>(m.protocols.map((p) => p.name));
      for (const n of [...common]) if (!names.has(n)) common.delete(n);
    }
    return common;
  }

  private addMemberAndRebalance(group: Group, memberId: string, req: JoinRequest): Promise<JoinResult> {
    const member = new Member(
      memberId,
      req.groupInstanceId,
      req.clientId,
      req.clientHost,
      req.sessionTimeoutMs,
      req.rebalanceTimeoutMs,
      req.protocols.map((p) => ({ name: p.name, metadata: Buffer.from(p.metadata) })),
    );
    if (group.members.size === 0) group.protocolType = req.protocolType;
    group.members.set(memberId, member);
    this.logger.debug("member joined", { group: group.id, member: memberId });
    return this.awaitJoin(group, member);
  }

  private updateMemberAndRebalance(group: Group, member: Member, req: JoinRequest): Promise<JoinResult> {
    member.protocols = req.protocols.map((p) => ({ name: p.name, metadata: Buffer.from(p.metadata) }));
    member.sessionTimeoutMs = req.sessionTimeoutMs;
    member.rebalanceTimeoutMs = req.rebalanceTimeoutMs;
    return this.awaitJoin(group, member);
  }

  private awaitJoin(group: Group, member: Member): Promise<JoinResult> {
    return new Promise((resolve) => {
      // A member that rejoins while an earlier join is still held gets the earlier one cancelled.
      member.joinWaiter?.({
        errorCode: ErrorCode.REBALANCE_IN_PROGRESS,
        generationId: -1,
        protocolName: "",
        leaderId: "",
        memberId: member.id,
        members: [],
      });
      member.joinWaiter = resolve;
      if (group.state !== "PreparingRebalance") this.prepareRebalance(group);
      else this.maybeCompleteJoin(group);
    });
  }

  private prepareRebalance(group: Group): void {
    if (group.state === "CompletingRebalance") {
      for (const m of group.members.values()) {
        m.assignment = EMPTY;
        const w = m.syncWaiter;
        m.syncWaiter = null;
        w?.({ errorCode: ErrorCode.REBALANCE_IN_PROGRESS, assignment: EMPTY });
      }
    }
    const wasEmpty = group.state === "Empty";
    group.state = "PreparingRebalance";
    let timeout = 0;
    for (const m of group.members.values()) timeout = Math.max(timeout, m.rebalanceTimeoutMs);
    if (wasEmpty && this.opts.initialRebalanceDelayMs > 0) {
      const delay = Math.min(this.opts.initialRebalanceDelayMs, timeout);
      group.initialDelayUntil = Date.now() + delay;
      const t = setTimeout(() => {
        // Timers may fire a hair early; the delay is over when this runs, whatever the clock says.
        group.initialDelayUntil = 0;
        this.maybeCompleteJoin(group);
      }, delay);
      t.unref();
    }
    if (group.rebalanceTimer) clearTimeout(group.rebalanceTimer);
    group.rebalanceTimer = setTimeout(() => this.onRebalanceTimeout(group), timeout);
    group.rebalanceTimer.unref();
    this.logger.debug("rebalance started", { group: group.id, generation: group.generation });
    this.maybeCompleteJoin(group);
  }

  private maybeCompleteJoin(group: Group): void {
    if (group.state !== "PreparingRebalance") return;
    if (group.pending.size > 0) return;
    if (Date.now() < group.initialDelayUntil) return;
    for (const m of group.members.values()) if (!m.joinWaiter) return;
    this.completeJoin(group);
  }

  /** Members that did not rejoin within the rebalance timeout are dropped, then the join completes. */
  private onRebalanceTimeout(group: Group): void {
    group.rebalanceTimer = null;
    if (group.state !== "PreparingRebalance") return;
    for (const m of [...group.members.values()]) {
      if (!m.joinWaiter) {
        if (m.sessionTimer) clearTimeout(m.sessionTimer);
        group.members.delete(m.id);
      }
    }
    for (const t of group.pending.values()) clearTimeout(t);
    group.pending.clear();
    this.completeJoin(group);
  }

  private completeJoin(group: Group): void {
    if (group.rebalanceTimer) clearTimeout(group.rebalanceTimer);
    group.rebalanceTimer = null;
    group.initialDelayUntil = 0;
    group.generation++;
    if (group.members.size === 0) {
      group.state = "Empty";
      // Like Kafka, an empty group keeps its protocol type: ListGroups still shows it as a consumer group.
      group.protocolName = null;
      group.leaderId = null;
      return;
    }
    group.protocolName = this.selectProtocol(group);
    if (!group.leaderId || !group.members.has(group.leaderId))
      group.leaderId = group.members.keys().next().value ?? null;
    group.state = "CompletingRebalance";
    this.logger.debug("rebalance completed", {
      group: group.id,
      generation: group.generation,
      members: group.members.size,
    });
    for (const m of group.members.values()) {
      const w = m.joinWaiter;
      m.joinWaiter = null;
      this.scheduleSessionExpiry(group, m);
      w?.(this.joinResultFor(group, m));
    }
  }

  private joinResultFor(group: Group, member: Member): JoinResult {
    const isLeader = member.id === group.leaderId;
    return {
      errorCode: ErrorCode.NONE,
      generationId: group.generation,
      protocolName: group.protocolName ?? "",
      leaderId: group.leaderId ?? "",
      memberId: member.id,
      members: isLeader
        ? [...group.members.values()].map((m) => ({
            memberId: m.id,
            groupInstanceId: m.groupInstanceId,
            metadata: m.metadataFor(group.protocolName),
          }))
        : [],
    };
  }

  /** Each member votes for its most preferred protocol that every member supports. */
  private selectProtocol(group: Group): string {
    const common = this.commonProtocols(group);
    const votes = new Map<string, number>();
    for (const m of group.members.values()) {
      const choice = m.protocols.find((p) => common.has(p.name));
      if (choice) votes.set(choice.name, (votes.get(choice.name) ?? 0) + 1);
    }
    let best = "";
    let bestVotes = -1;
    for (const [name, n] of votes) if (n > bestVotes) [best, bestVotes] = [name, n];
    return best;
  }

  private scheduleSessionExpiry(group: Group, member: Member): void {
    if (member.sessionTimer) clearTimeout(member.sessionTimer);
    member.sessionTimer = setTimeout(() => {
      member.sessionTimer = null;
      if (group.members.get(member.id) !== member) return;
      // A member parked in JoinGroup or SyncGroup is waiting on us, not dead.
      if (member.joinWaiter || member.syncWaiter) return this.scheduleSessionExpiry(group, member);
      this.logger.info("member session expired", { group: group.id, member: member.id });
      this.removeMember(group, member, "session expired");
    }, member.sessionTimeoutMs);
    member.sessionTimer.unref();
  }

  private removeMember(group: Group, member: Member, why: string): void {
    if (member.sessionTimer) clearTimeout(member.sessionTimer);
    group.members.delete(member.id);
    this.logger.debug("member removed", { group: group.id, member: member.id, why });
    const jw = member.joinWaiter;
    const sw = member.syncWaiter;
    member.joinWaiter = null;
    member.syncWaiter = null;
    jw?.({
      errorCode: ErrorCode.UNKNOWN_MEMBER_ID,
      generationId: -1,
      protocolName: "",
      leaderId: "",
      memberId: member.id,
      members: [],
    });
    sw?.({ errorCode: ErrorCode.UNKNOWN_MEMBER_ID, assignment: EMPTY });
    switch (group.state) {
      case "Stable":
      case "CompletingRebalance":
        this.prepareRebalance(group);
        break;
      case "PreparingRebalance":
        this.maybeCompleteJoin(group);
        break;
      default:
        break;
    }
  }
}
