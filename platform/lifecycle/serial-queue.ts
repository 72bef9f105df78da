/**
 * Runs work one at a time per key, in arrival order; different keys do not wait for each other.
 * A failed run does not hold up the next one.
 */
export class SerialQueue {
  private readonly tails = new Map<string, Promise<void>>();

  async run<T>(key: string, work: () => Promise<T>): Promise<T> {
    const before = this.tails.get(key);
    let release!: () => void;
    const mine = new Promise<void>((r) => (release = r));
    const tail = before ? before.then(() => mine) : mine;
    this.tails.set(key, tail);
    try {
      await before;
      return await work();
    } finally {
      release();
      // The last in line leaves nothing behind, so idle keys cost no memory.
      if (this.tails.get(key) === tail) this.tails.delete(key);
    }
  }
}
