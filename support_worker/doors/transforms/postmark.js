// Inngest webhook transform for Postmark's inbound webhook (003 D4 Part A).
//
// Paste this whole file into the Inngest dashboard: Manage > Webhooks > Create Webhook, then
// the webhook's Transform editor (docs/doors.md walks through it). It turns Postmark's inbound
// JSON (https://postmarkapp.com/developer/webhooks/inbound-webhook) into the event the email
// function answers, `customer/email.received`, in the shape core/events.py accepts:
//   from_email   the sender's address (the app finds the customer by it)
//   subject      Postmark's Subject
//   body         the customer's new words: StrippedTextReply, else TextBody, else HtmlBody as text
//   received_at  Postmark's Date as ISO 8601 (UTC), e.g. 2026-08-01T20:45:32.000Z
// and the event id from Postmark's MessageID, "postmark-<MessageID>", the same id the in-app
// webhook (/webhooks/email) uses: a retried or doubly configured delivery is one event.
//
// A transform runs on Inngest's servers and cannot reach Postgres, so unlike the in-app webhook
// it sends the body inline and no attachments; an email above Inngest's event size limit
// (256 KiB on the free plan) is refused by Inngest. Use /webhooks/email for large mail.
// Plain ES5 on purpose: no arrow functions, spreads or template strings.
function transform(evt, headers, queryParams) {
  function addressOf(text) {
    var match = /<([^<>\s]+@[^<>\s]+)>/.exec(text || "");
    return match ? match[1] : (text || "").trim() || null;
  }
  function textOfHtml(html) {
    return (html || "")
      .replace(/<(script|style)[^>]*>[\s\S]*?<\/\1>/gi, " ")
      .replace(/<br\s*\/?>|<\/p>|<\/div>/gi, "\n")
      .replace(/<[^>]+>/g, " ")
      .replace(/&nbsp;/g, " ")
      .replace(/&lt;/g, "<")
      .replace(/&gt;/g, ">")
      .replace(/&quot;/g, '"')
      .replace(/&#39;/g, "'")
      .replace(/&amp;/g, "&")
      .replace(/[ \t]+/g, " ")
      .trim();
  }
  function isoDate(text) {
    var when = new Date(text || "");
    return isNaN(when.getTime()) ? null : when.toISOString();
  }
  var from = (evt.FromFull && evt.FromFull.Email) || addressOf(evt.From);
  var body = (evt.StrippedTextReply || "").trim() || (evt.TextBody || "").trim() || textOfHtml(evt.HtmlBody);
  return {
    id: "postmark-" + evt.MessageID,
    name: "customer/email.received",
    data: {
      from_email: from,
      subject: evt.Subject || null,
      body: body,
      received_at: isoDate(evt.Date),
      thread_key: evt.MailboxHash ? "mailbox:" + evt.MailboxHash : null,
      postmark_message_id: evt.MessageID
    }
  };
}
