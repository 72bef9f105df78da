/**
 * Coalesces durability requests: many acks=-1 producers waiting on the same file share one fdatasync,
 * and a request made while a sync is running waits for the next one (the running one may have started
 * before its bytes were written).
 */
export class Syncer {
  private written = 0;
  private synced = 0;
  private running = false;
  private waiters: { target: number; resolve: () => void; reject: (e: unknown) => void }[] = [];

  constructor(private readonly doSync: () => Promise<void>) {}

  /** Call after every write whose durability someone may wait for. */
  markWritten(): void {
    this.written++;
  }

  get isDirty(): boolean {
    return this.written !== this.synced;
  }

  whenDurable(): Promise<void> {
    const target = this.written;
    if (this.synced >= target) return Promise.resolve();
    return new Promise((resolve, reject) => {
      this.waiters.push({ target, resolve, reject });
      this.kick();
    });
  }

  private kick(): void {
    if (this.running || this.waiters.length === 0) return;
    this.running = true;
    const covering = this.written;
    this.doSync().then(
      () => {
        this.synced = Math.max(this.synced, covering);
        const still: typeof this.waiters = [];
        for (const w of this.waiters) w.target <= covering ? w.resolve() : still.push(w);
        this.waiters = still;
        this.running = false;
        this.kick();
      },
      (err: unknown) => {
        const failed = this.waiters;
        this.waiters = [];
        this.running = false;
        for (const w of failed) w.reject(err);
      },
    );
  }
}
