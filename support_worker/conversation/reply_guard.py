"""The reply guard: no reply goes out claiming money moved that did not move in this run.

Checked against what the run actually paid (its `refunds` rows), never against what the model
or a reviewer says about it, so it holds for the agent's draft and a reviewer's edited reply
alike. The rules, clause by clause (a clause ends at . ! ? ; : , a dash, a new line, or a
joining word such as "and", "but", "so"):

1. A clause that says money moved ("we've refunded you", "your refund is on its way", "the
   $499 is back on your card", "we reimbursed", "credited your account") is a claim, unless it
   is negated an odd number of times ("no refund has been issued" is not a claim; "No worries,
   we've refunded you" is: "no worries" negates nothing, and the comma ends the clause).
   With no refund issued in this run, any claim blocks the reply.
2. Every amount of money in a clause that speaks of money moving (or of refunds at all) must
   be the amount of a refund issued in this run: "$499.00 has been refunded" after $120.50 was
   paid blocks the reply, as does a spelled-out or foreign-currency amount that cannot be
   checked. An amount in a clause that says nothing about money moving ("your order of $499")
   is left alone.
3. A claim that names an order must name one this run refunded.

Before matching, the text is normalized the way an adversary would try to dodge a pattern:
NFKC (fullwidth letters), invisible format characters removed (zero-width spaces, soft
hyphens), accents stripped, look-alike Cyrillic and Greek letters mapped to Latin, digits used
as letters inside words read as letters ("r3fund3d"), and letters split by spaces, dots or
hyphens joined again ("r e f u n d e d"). A blocked reply is replaced by `safe_reply`, written
from the refunds alone, and the reasons go into the `reply_sent` audit row.

This is a check against a closed list of ways to say money moved, widened by normalization;
it errs towards blocking (a replaced reply is still true), and docs/controls.md says so.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from pydantic import BaseModel

from support_worker.core.money import format_money


class PaidRefund(BaseModel):
    """A refund this run issued, as the guard needs it."""

    id: int
    order_id: int
    amount_cents: int


class GuardVerdict(BaseModel):
    allowed: bool
    problems: list[str] = []


# Latin look-alikes an adversary swaps in (Cyrillic, Greek, a few symbols).
_CONFUSABLES = str.maketrans(
    {
        "а": "a", "в": "b", "с": "c", "ԁ": "d", "е": "e", "ё": "e", "һ": "h", "і": "i", "ї": "i", "ј": "j",
        "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "ѕ": "s", "т": "t", "у": "y", "х": "x", "ԛ": "q",
        "ԝ": "w", "ɡ": "g", "ո": "n", "ս": "u", "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k",
        "ν": "v", "ο": "o", "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "ω": "w", "ı": "i", "ł": "l", "ø": "o",
        "đ": "d", "ß": "ss", "æ": "ae", "œ": "oe", "＄": "$", "﹩": "$", "’": "'", "‘": "'", "ʼ": "'",
    }
)  # fmt: skip
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "@": "a", "|": "l"})


def normalize(text: str) -> str:
    """The text as the guard reads it: one spelling of every letter, lower case."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(c for c in text if unicodedata.category(c) != "Cf")
    text = unicodedata.normalize("NFKD", text.casefold().translate(_CONFUSABLES))
    return "".join(c for c in text if not unicodedata.combining(c)).translate(_CONFUSABLES)


# Where a clause ends: sentence and clause punctuation (not a decimal point or thousands comma),
# dashes, new lines, and the words that join one statement to the next.
_CLAUSE_END = re.compile(
    r"(?<!\d)[.,](?!\d)|[.,](?=\s)|[!?;:\n\u2014\u2013]|\s-+\s"
    r"|\b(?:and|but|so|however|because|since|although|though|then|which|while|whereas|plus|also|anyway)\b"
)
_WORD = re.compile(r"[a-z0-9$@|']+")

# Said of money itself: each of these, on the joined letters of a clause, is a claim.
_MOVED = re.compile(
    r"refunded|refunding|reimburs|credited|creditback|creditingyour|crediting|reversed|reversal|reversing"
    r"|chargeback|moneyback|fundsback|paidback|paidyou|payyouback|sentyou|sentback|wiredyou|transferred"
    r"|deposited|compensated|backtoyour|backonyour|backinyour|backintoyour|returnedtoyou|returnedtoyour"
    r"|returnedthe|returnedyour|isbackwith|youwillgetback|youllgetback|yougetback|yourmoney|yourfunds"
    r"|refundto|refundyou|refundwillbe|refundisbeing|refundhasbeen|refundwasbeen|willrefund|wehaverefund"
    r"|weverefund|refundis|refundwas|refundsis|refundshave|refundhas"
    r"|cancell?ed(?:the|your|that|this)(?:duplicate|second|extra|double)?(?:charge|payment|transaction)"
    r"|voided(?:the|your)"
)
# A refund (the noun) with a word that says it happened or will.
_REFUND = re.compile(r"refund|reimburse|moneyback|storecredit|accountcredit|acredit")
_HAPPENED = re.compile(
    r"issued|processed|approved|sent|completed|complete|initiated|underway|ontheway|onitsway|granted"
    r"|authori[sz]ed|confirmed|released|done|made|goingthrough|gonethrough|wentthrough|inprogress|arriv"
    r"|appear|posted|paid|applied|succeeded|successful|finali[sz]ed|executed|submitted|placed|started"
    r"|expectyour|expectthe|expecta|expectto|willreceive|shouldreceive|llreceive|receiveyour|receivethe|receivea"
    r"|receiving|willsee|shouldsee|willget|isbeing|hasbeen|havebeen|willbe|takecareof|takencareof"
    r"|handled|settled|finished|activated|triggered|queued|scheduled|booked|ready|yours"
)
# Words that say money is being talked about moving; amounts in such a clause are checked.
_MONEY_CUES = re.compile(
    r"refund|reimburs|credit|revers|back|return|sent|send|paid|pay|deposit|transfer|receiv|wire|cash|funds"
    r"|money|arriv|appear|post|issu|process|approv|compensat|account|card|statement|wallet|bank|yours|owed"
    r"|see|get|expect|gave|give"
)
# Negations, counted per clause; a claim negated an odd number of times is no claim.
_NEGATORS = {
    "no", "not", "never", "none", "nothing", "nor", "neither", "cannot", "cant", "can't", "couldn't", "couldnt",
    "won't", "wont", "wouldn't", "wouldnt", "didn't", "didnt", "hasn't", "hasnt", "haven't", "havent", "isn't",
    "isnt", "wasn't", "wasnt", "weren't", "werent", "aren't", "arent", "unable", "without", "don't", "dont",
    "doesn't", "doesnt", "shouldn't", "mustn't", "nobody",
}  # fmt: skip
# Verbs that negate a refund said before them ("your refund was declined"), not one after
# ("declined charges were refunded").
_REFUSALS = {"declined", "denied", "rejected", "refused"}
_REFUND_WORD = re.compile(r"refund|reimburs|credit")
# Phrases that hold a negation word but negate nothing ("no worries, we've refunded you").
_NOT_NEGATIONS = re.compile(
    r"\b(?:not only|no worries|no worry|no problem|not a problem|not to worry|no doubt|no question"
    r"|no need to worry|nothing to worry|never fear|no matter|no wonder|no later than|not later than"
    r"|no less than|no fewer than|not long|no longer worry|not just)\b"
)
_AMOUNT = re.compile(
    r"(?P<cur>[$€£¥₹]|\b(?:usd|us\$|eur|gbp|cad|aud)\b)\s*(?P<a>\d[\d,]*(?:\.\d+)?)"
    r"|(?P<b>\d[\d,]*(?:\.\d+)?)\s*(?P<unit>[$€£¥₹]|\b(?:usd|dollars?|bucks|cents?|eur|euros?|gbp|pounds?)\b)"
)
_SPELLED_MONEY = re.compile(r"\b(?:dollars?|bucks|cents?|euros?|pounds?|usd|eur|gbp)\b|[€£¥₹]")
_ORDER = re.compile(r"\border\s*(?:#|no\.?|number)?\s*(\d{3,})")


def _cents(match: re.Match[str]) -> int | None:
    """The amount in cents, or None when it is not in dollars (another currency cannot be checked)."""
    number = (match.group("a") or match.group("b") or "").replace(",", "")
    marker = (match.group("cur") or match.group("unit") or "").strip()
    try:
        value = float(number)
    except ValueError:
        return None
    if marker.startswith("cent"):
        return round(value)
    if marker in ("$", "usd", "us$", "dollar", "dollars", "bucks"):
        return round(value * 100)
    return None


# Letters strung together with dots or other marks ("r.e.f.u.n.d.e.d"): one word, not sentences.
_STRUNG = re.compile(r"\b(?:[a-z0-9][.\-_*·/~+]){2,}[a-z0-9]\b")


def clauses(text: str) -> list[str]:
    """The reply's clauses, normalized (see the module docstring for where a clause ends)."""
    joined = _STRUNG.sub(lambda m: re.sub(r"[^a-z0-9]", "", m.group()), normalize(text))
    return [c.strip() for c in _CLAUSE_END.split(joined) if c and c.strip()]


def _letters(clause: str) -> str:
    """The clause's letters only, digits inside words read as letters: "r e-f.u n d 3 d" is "refunded"."""
    words = [w.translate(_LEET) if re.search(r"[a-z]", w) else w for w in _WORD.findall(clause)]
    return re.sub(r"[^a-z]", "", "".join(words))


def _negated(clause: str) -> bool:
    words = _WORD.findall(_NOT_NEGATIONS.sub(" ", clause))
    negations = sum(1 for w in words if w in _NEGATORS or w.endswith("n't"))
    first_refund = next((n for n, w in enumerate(words) if _REFUND_WORD.search(w)), len(words))
    negations += sum(1 for w in words[first_refund + 1 :] if w in _REFUSALS)
    return negations % 2 == 1


def claims_money_moved(clause: str) -> bool:
    """Whether one (normalized) clause says money moved to the customer, negations counted."""
    letters = _letters(clause)
    said = bool(_MOVED.search(letters)) or bool(_REFUND.search(letters) and _HAPPENED.search(letters))
    return said and not _negated(clause)


def check_reply(reply: str, refunds: Iterable[PaidRefund]) -> GuardVerdict:
    """Whether `reply` may go out given the refunds this run issued; why not, clause by clause."""
    paid = list(refunds)
    amounts = {r.amount_cents for r in paid}
    orders = {r.order_id for r in paid}
    problems: list[str] = []
    for clause in clauses(reply):
        claim = claims_money_moved(clause)
        shown = clause[:120]
        if claim and not paid:
            problems.append(f"claims money moved, but no refund was issued in this run: {shown!r}")
            continue
        if not (claim or _MONEY_CUES.search(_letters(clause))):
            continue
        found = list(_AMOUNT.finditer(clause))
        for match in found:
            cents = _cents(match)
            if cents is None or cents not in amounts:
                what = "an amount in another currency" if cents is None else format_money(cents)
                issued = ", ".join(format_money(a) for a in sorted(amounts)) or "nothing"
                problems.append(f"names {what} where this run issued {issued}: {shown!r}")
        if not found and _SPELLED_MONEY.search(clause):
            problems.append(f"names an amount that cannot be checked: {shown!r}")
        if claim:
            for order in _ORDER.findall(clause):
                if int(order) not in orders:
                    problems.append(f"claims a refund on order {order}, which this run did not refund: {shown!r}")
    return GuardVerdict(allowed=not problems, problems=problems)


# What the safe reply says of a refund that was not paid, by the gate's status: fixed texts,
# never the model's or a reviewer's words (a reviewer's note could claim anything).
_NOT_PAID = {
    "rejected": "After review, we were not able to approve the refund for order {order}, so no refund has been issued.",
    "expired": "We could not finish reviewing the refund for order {order} in time, so no refund has been issued.",
    "withdrawn": "As you asked, the refund request for order {order} was cancelled, so no refund has been issued.",
}


class Unpaid(BaseModel):
    """A refund this run asked for and did not pay, as the safe reply tells it."""

    status: str  # the gate's status: blocked, rejected, expired, withdrawn
    order_id: int | None = None
    explanation: str = ""  # for "blocked": the policy's own words ("Refund refused: ...")


def _unpaid_line(unpaid: Unpaid) -> str:
    template = _NOT_PAID.get(unpaid.status)
    if template and unpaid.order_id is not None:
        return template.format(order=unpaid.order_id)
    # The policy's refusal is written by the server from the order as stored, e.g. "order 1004
    # has already been fully refunded"; only its own prefix is checked for.
    # "Already refunded" is a claim the guard cannot tell from a false one, so it is said as
    # what it means for this request.
    if unpaid.status == "blocked" and unpaid.explanation.startswith("Refund refused: "):
        why = unpaid.explanation.removeprefix("Refund refused: ")
        return "We could not issue that refund: " + why.replace(
            "has already been fully refunded", "has nothing left to refund"
        )
    return ""


def safe_reply(customer_name: str, refunds: Iterable[PaidRefund], unpaid: Iterable[Unpaid] = ()) -> str:
    """The reply sent instead of a blocked one: only what the run's refunds rows and gate
    outcomes say, in the app's own words."""
    first = (customer_name.split() or ["there"])[0]
    paid = list(refunds)
    facts = [
        f"A refund of {format_money(r.amount_cents)} for order {r.order_id} has been issued (refund #{r.id})."
        for r in paid
    ] or ["We have not issued a refund for this request."]
    facts += [line for line in map(_unpaid_line, unpaid) if line]
    tail = (
        "If anything else looks wrong, reply to this email"
        if paid
        else "If you believe this is a mistake, reply to this email"
    )
    return (
        f"Hi {first},\n\nthank you for your patience. {' '.join(facts)} {tail} and a member of our team will "
        "take another look.\n\nBest regards,\nThe Support Team"
    )


def guard(
    reply: str, refunds: Iterable[PaidRefund], *, customer_name: str, unpaid: Iterable[Unpaid] = ()
) -> tuple[str, GuardVerdict]:
    """The reply to send (the given one, or `safe_reply` when it is blocked) and the verdict."""
    paid = list(refunds)
    verdict = check_reply(reply, paid)
    return (reply if verdict.allowed else safe_reply(customer_name, paid, unpaid)), verdict
