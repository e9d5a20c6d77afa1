// Decides whether a crashed server is restarted. A server that dies in a loop
// (bad binary, broken kubeconfig) must end in a visible error, not in an
// endless silent respawn.

export type CrashDecision = 'restart' | 'give-up';

export class CrashBudget {
  private crashes: number[] = [];

  constructor(
    private readonly maxRestarts = 4,
    private readonly windowMs = 3 * 60 * 1000,
    private readonly now: () => number = Date.now,
  ) {}

  recordCrash(): CrashDecision {
    const now = this.now();
    this.crashes = this.crashes.filter((at) => now - at < this.windowMs);
    this.crashes.push(now);
    return this.crashes.length <= this.maxRestarts ? 'restart' : 'give-up';
  }

  /** After a deliberate restart the user gets a fresh budget. */
  reset(): void {
    this.crashes = [];
  }
}
