// Live updates by polling: each view owns a Live; leaving the view stops all of its loops.

export class Live {
  constructor() {
    this.loops = new Set();
    this.stopped = false;
  }

  /**
   * Run `fn` now and then `ms` after each run ends (runs never overlap). Returns a handle whose
   * stop() ends this loop only. An error thrown by `fn` goes to `onError` and the loop goes on.
   */
  every(ms, fn, onError = () => {}) {
    const loop = { timer: null, stopped: false };
    loop.stop = () => {
      loop.stopped = true;
      clearTimeout(loop.timer);
      this.loops.delete(loop);
    };
    const tick = async () => {
      if (loop.stopped || this.stopped) return;
      try {
        await fn(loop);
      } catch (err) {
        onError(err);
      }
      if (!loop.stopped && !this.stopped) loop.timer = setTimeout(tick, ms);
    };
    this.loops.add(loop);
    tick();
    return loop;
  }

  get active() {
    return !this.stopped;
  }

  stop() {
    this.stopped = true;
    for (const loop of [...this.loops]) loop.stop();
  }
}
