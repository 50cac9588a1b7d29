import type { Socket } from 'node:net';

/**
 * One socket write per event-loop turn: the first answer of a turn corks the socket and a
 * nextTick uncorks it, so every answer completed in the same turn (a batch of signatures
 * delivered together) leaves in one TLS record write instead of one syscall each.
 */
export class TurnCoalescer {
  private corked = false;
  private readonly uncork = (): void => {
    this.corked = false;
    this.socket.uncork();
  };

  constructor(private readonly socket: Pick<Socket, 'cork' | 'uncork'>) {}

  /** Call before each write of an answer. */
  beforeWrite(): void {
    if (this.corked) return;
    this.corked = true;
    this.socket.cork();
    process.nextTick(this.uncork);
  }
}
