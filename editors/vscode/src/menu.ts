// The quick pick behind the status bar item.

import type { PodloopStatus } from './protocol';

export type MenuAction = 'syncAll' | 'reload' | 'pause' | 'resume' | 'showStatus' | 'showLogs' | 'restartServer';

export interface MenuItem {
  action: MenuAction;
  label: string;
  description: string;
}

export function menuItems(status: PodloopStatus | undefined): MenuItem[] {
  const paused = status?.state === 'paused';
  return [
    { action: 'syncAll', label: '$(sync) Sync all', description: 'push every mapped file that differs' },
    { action: 'reload', label: '$(refresh) Reload', description: "run each mapping's reload command" },
    paused
      ? { action: 'resume', label: '$(debug-start) Resume', description: 'deliver pending saves and keep syncing' }
      : { action: 'pause', label: '$(debug-pause) Pause', description: 'keep saves pending until resumed' },
    { action: 'showStatus', label: '$(info) Show status', description: 'targets, last syncs and errors' },
    { action: 'showLogs', label: '$(output) Show logs', description: "the server's log" },
    { action: 'restartServer', label: '$(debug-restart) Restart server', description: '' },
  ];
}
