// Server-Sent Events from the gateway's `:watch` routes: one JSON message per event. EventSource
// reconnects by itself after a drop; `event: error` carries a Status and ends the stream.

export function watch<T>(path: string, onMessage: (message: T) => void, onEnd?: () => void): () => void {
  const source = new EventSource(path, { withCredentials: true });
  source.onmessage = (event) => onMessage(JSON.parse(event.data) as T);
  source.addEventListener('error', (event) => {
    // A named `error` event from the gateway (it has data), or the server closing a finished stream.
    if ((event as MessageEvent).data !== undefined || source.readyState === EventSource.CLOSED) {
      source.close();
      onEnd?.();
    }
  });
  return () => source.close();
}

/** A watch opened again (after `retryMs`) each time it ends, until stopped: for a list or statistics,
 * whose stream has no end of its own but ends when the server recycles a connection. */
export function follow<T>(path: string, onMessage: (message: T) => void, retryMs = 5000): () => void {
  let stopped = false;
  let close = () => {};
  let timer: ReturnType<typeof setTimeout> | undefined;
  const open = () => {
    close = watch<T>(path, onMessage, () => {
      if (!stopped) timer = setTimeout(open, retryMs);
    });
  };
  open();
  return () => {
    stopped = true;
    clearTimeout(timer);
    close();
  };
}
