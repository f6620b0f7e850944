"""The console's languages: English (the source strings) and Turkish, from babel catalogues.

Catalogues are the ``.po`` files under ``agent_ui/locale/<lang>/LC_MESSAGES/messages.po``,
read and compiled in memory at first use (no build step, no binary ``.mo`` in the tree).
Templates call ``_("...")``; the strings the page's script needs travel in a JSON data block
(``JS_STRINGS``), translated the same way. A test checks that every string of the templates
and of ``JS_STRINGS`` has a Turkish translation.
"""

from __future__ import annotations

import functools
from io import BytesIO
from pathlib import Path

from babel import Locale, negotiate_locale
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import NullTranslations, Translations

LOCALE_DIR = Path(__file__).parent / "locale"
LANGUAGES = ("en", "tr")
DEFAULT = "en"

# What console.js shows, by key (English source text).
JS_STRINGS = {
    "accept": "Accept",
    "decline": "Decline",
    "waiting": "waiting {n}s",
    "live": "live",
    "reconnecting": "reconnecting…",
    "connecting": "connecting…",
    "internal_note": "internal note",
    "customer": "Customer",
    "conversation": "Conversation #{id}",
    "cannot_open": "This conversation cannot be opened.",
    "mentioned_by": "{name} mentioned you",
    "merge_confirm": "Merge customer #{source} into customer #{target}? This cannot be undone.",
    "email_unverified": "unverified email {email}",
    "email_verified": "verified email {email}",
    "sla_due": "{metric} due in {time}",
    "sla_overdue": "{metric} overdue by {time}",
    "sla_paused": "{metric} paused",
    "sla_warning": "SLA warning: {metric}, conversation #{id}",
    "sla_breached": "SLA breached: {metric}, conversation #{id}",
    "first_response": "First response",
    "next_response": "Next response",
    "periodic_update": "Update",
    "resolution": "Resolution",
    "minutes": "{n} min",
    "hours": "{n} h",
    "hours_minutes": "{h} h {m} min",
    "status_open": "Open",
    "status_pending": "Pending",
    "status_snoozed": "On hold",
    "status_resolved": "Resolved",
    "channel_email": "Email",
    "channel_webchat": "Web chat",
    "channel_voice": "Phone call",
    # Identity kind: a number SMS, WhatsApp and calls share.
    "channel_phone": "Phone",
    "delivery_received": "received",
    "delivery_queued": "queued",
    "delivery_sending": "sending",
    "delivery_sent": "sent",
    "delivery_delivered": "delivered",
    "delivery_undelivered": "undelivered",
    "delivery_failed": "failed",
    "delivery_read": "read",
    "bad_timezone": "Unknown time zone: pick one from the list (e.g. Europe/Istanbul).",
    "bad_locale": "Unknown language.",
    # Tickets and satisfaction (docs §16).
    "ticket_type_question": "Question",
    "ticket_type_incident": "Incident",
    "ticket_type_problem": "Problem",
    "ticket_type_complaint": "Complaint",
    "ticket_type_task": "Task",
    "ticket_status_new": "New",
    "ticket_status_open": "Open",
    "ticket_status_pending": "Pending",
    "ticket_status_on_hold": "On hold",
    "ticket_status_solved": "Solved",
    "ticket_status_closed": "Closed",
    "priority_low": "Low",
    "priority_normal": "Normal",
    "priority_high": "High",
    "priority_urgent": "Urgent",
    "ticket_status_of": "Status of ticket #{id}",
    "ticket_priority_of": "Priority of ticket #{id}",
    "unassigned": "Unassigned",
    "no_tickets": "No tickets.",
    "no_ratings": "No ratings yet.",
    "score_1": "Very unsatisfied",
    "score_2": "Unsatisfied",
    "score_3": "Neutral",
    "score_4": "Satisfied",
    "score_5": "Very satisfied",
    "score_of": "{score}/5",
    "survey_sent": "Awaiting an answer",
    "survey_unsendable": "Could not be sent",
    "survey_ticket": "ticket #{id}",
    "agent_number": "agent #{id}",
    "you": "you",
}


# What supervisor.js (the wallboard) shows, by key.
SUPERVISOR_STRINGS = {
    "live": "live",
    "reconnecting": "reconnecting…",
    "connecting": "connecting…",
    "overall": "All queues",
    "waiting": "Waiting",
    "longest_wait": "Longest wait",
    "service_level": "Service level",
    "service_level_hint": "answered within {seconds} s (target {target})",
    "below_target": "below target",
    "on_target": "on target",
    "asa": "Average speed of answer",
    "aht": "Average handle time",
    "abandoned": "Abandoned",
    "abandoned_value": "{rate} ({count} of {offered})",
    "answered_value": "{answered} of {offered} answered",
    "occupancy": "Occupancy",
    "agents": "Agents",
    "agents_value": "{available} available, {busy} busy, {away} away, {offline} offline",
    "staffing": "Erlang C, next 15 minutes",
    "staffing_value": "{agents} agents for {rate} arrivals/h at {aht} (service level {level})",
    "staffing_unknown": "needs a handled contact today",
    "available": "Available",
    "busy": "Busy",
    "away": "Away",
    "offline": "Offline",
    "set_state_of": "Set the state of {name}",
    "agent_option": "Agent: {name}",
    "queue_option": "Queue: {name}",
    "arrivals_summary": "Today so far: {total} arrivals; busiest interval {label} ({count}).",
    "arrivals_bar": "{label}: {count} arrivals",
    "level_summary": "Service level per interval against the target of {target}.",
    "level_bar": "{label}: service level {level}",
    "reassigned": "Conversation #{id} reassigned.",
    "priority_changed": "Priority of conversation #{id} changed to {priority}.",
    "state_changed": "{name} is now {state}.",
    "refused": "Refused: {message}",
    "low": "Low",
    "normal": "Normal",
    "high": "High",
    "urgent": "Urgent",
    "pick": "Use",
    "offered": "offered",
    "peak": "peak {count}",
    "target": "target {target}",
    "sla": "SLA compliance today",
    "sla_value": "{met} met, {missed} missed, {risk} at risk",
    "sla_warning": "SLA warning: {metric}, conversation #{id}",
    "sla_breached": "SLA breached: {metric}, conversation #{id}",
    "first_response": "First response",
    "next_response": "Next response",
    "periodic_update": "Update",
    "resolution": "Resolution",
}


@functools.cache
def translations(language: str) -> NullTranslations:
    path = LOCALE_DIR / language / "LC_MESSAGES" / "messages.po"
    if language == DEFAULT or not path.exists():
        return NullTranslations()
    with path.open("rb") as source:
        catalog = read_po(source, locale=language)
    compiled = BytesIO()
    write_mo(compiled, catalog)
    compiled.seek(0)
    return Translations(compiled)


def pick(preferred: str | None, accept_language: str | None = None) -> str:
    """The language to use: the agent's own setting if we have it, else the browser's."""
    if preferred:
        language = preferred.replace("-", "_").split("_")[0].lower()
        if language in LANGUAGES:
            return language
    if accept_language:
        wanted = [
            part.split(";")[0].strip().replace("-", "_")
            for part in accept_language.split(",")
            if part.strip()
        ]
        found = negotiate_locale(wanted, list(LANGUAGES), sep="_")
        if found:
            return found.split("_")[0]
    return DEFAULT


def js_strings(language: str, table: dict[str, str] | None = None) -> dict[str, str]:
    gettext = translations(language).gettext
    return {key: gettext(text) for key, text in (table or JS_STRINGS).items()}


def language_name(language: str) -> str:
    return Locale.parse(language).get_display_name(language) or language
