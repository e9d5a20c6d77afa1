// Keeps "the last batch" meaningful. The server may report a check that found
// nothing to send (the file watcher's echo of a save that was already
// delivered) as a lastSync of 0 files, 0 bytes, 0 ms; shown as is, the status
// bar would replace "14 ms" with "0 ms" a moment after every save.

import type { LastSync, PodloopStatus, TargetStatus } from './protocol';

export function isNoOp(lastSync: LastSync): boolean {
  return lastSync.files === 0 && lastSync.bytes === 0 && lastSync.ms === 0;
}

export class LastSyncMemory {
  private remembered = new Map<string, LastSync>();

  apply(status: PodloopStatus): PodloopStatus {
    const next = new Map<string, LastSync>();
    const targets = status.targets.map((target): TargetStatus => {
      const key = targetKey(target);
      const incoming = target.lastSync;
      if (incoming && !isNoOp(incoming)) {
        next.set(key, incoming);
        return target;
      }
      const previous = this.remembered.get(key);
      if (previous === undefined) {
        return target;
      }
      next.set(key, previous);
      return { ...target, lastSync: previous };
    });
    // Only targets that still exist are remembered: a replaced pod starts afresh.
    this.remembered = next;
    return { ...status, targets };
  }
}

function targetKey(target: TargetStatus): string {
  return [target.mapping, target.namespace, target.pod, target.container].join('\u0000');
}
