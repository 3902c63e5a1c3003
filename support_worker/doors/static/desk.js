// Each pending request's run reports its progress live (server-sent events from the audit trail).
// A file, not an inline script, so the desk's Content-Security-Policy needs no 'unsafe-inline'.
for (const el of document.querySelectorAll(".live-status")) {
  const events = new EventSource("/runs/" + encodeURIComponent(el.dataset.run) + "/status");
  events.onmessage = (message) => {
    el.textContent = JSON.parse(message.data).line;
  };
}
