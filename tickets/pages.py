"""The public survey page ``/survey/{token}`` (§16): no sign-in, the token is the credential.

``GET`` shows the question in the survey's language: five choices and an optional comment, a
plain form that works without JavaScript (``?score=N`` preselects a choice, as a link in an
email could; a GET never records anything). ``POST`` (form-encoded ``score``, ``comment``)
records the answer or changes it, until the survey expires: 400 for a score outside 1-5 or a
comment over 2,000 characters (the form again, with the message), 404 for an unknown token,
410 once it closed, 413 over 1 MiB. The page loads nothing: its style is inline, allowed by
its hash in the Content-Security-Policy; Jinja2 escapes everything the customer wrote.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime
from pathlib import Path
from typing import Any

from babel.dates import format_date
from jinja2 import Environment, FileSystemLoader, select_autoescape
from litestar import Request, Response, get, post
from litestar.exceptions import ClientException
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.params import FromPath

from contact_center.runtime import Runtime
from tickets import surveys
from tickets.models import SatisfactionSurvey

MAX_BODY = 1024 * 1024  # two short fields: like the other public forms

templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
)

CSS = (
    "*{box-sizing:border-box}"
    "body{margin:0;font:16px/1.5 system-ui,sans-serif;color:#1d232a;background:#f4f6f8}"
    "main{max-width:560px;margin:24px auto;padding:24px;background:#fff;border-radius:8px;"
    "box-shadow:0 2px 8px #0002}"
    "h1{font-size:22px;margin:0 0 8px}.ticket{color:#57606a;margin:0 0 16px}"
    "fieldset{border:0;padding:0;margin:0 0 16px}legend{font-weight:600;margin-bottom:8px}"
    ".choice{display:block;padding:10px 12px;margin:6px 0;border:1px solid #d0d7de;"
    "border-radius:6px;cursor:pointer}"
    ".choice:has(input:checked){border-color:#1f6feb;background:#eef4ff}"
    ".n{display:inline-block;width:1.5em;font-weight:600}"
    ".comment{display:block;margin:0 0 16px}"
    "textarea{display:block;width:100%;margin-top:6px;padding:8px;font:inherit}"
    "button{font:inherit;padding:10px 20px;border:0;border-radius:6px;background:#1f6feb;"
    "color:#fff;cursor:pointer}"
    ".error{color:#b42318;background:#fee4e2;padding:8px;border-radius:4px}"
    "blockquote{margin:8px 0;padding:8px 12px;border-left:3px solid #d0d7de;"
    "white-space:pre-wrap;overflow-wrap:anywhere}"
)
_CSS_HASH = base64.b64encode(hashlib.sha256(CSS.encode()).digest()).decode()
PAGE_HEADERS = {
    "Content-Security-Policy": f"default-src 'none'; style-src 'sha256-{_CSS_HASH}'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    # The token is in the address: never hand it to another site.
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _runtime(request: Request[Any, Any, Any]) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


def _page(name: str, lang: str, status: int = 200, **ctx: Any) -> Response[str]:
    return Response(
        templates.get_template(name).render(lang=lang, t=surveys.text(lang), css=CSS, **ctx),
        media_type="text/html; charset=utf-8",
        status_code=status,
        headers=PAGE_HEADERS,
    )


def _date(value: datetime, lang: str) -> str:
    return format_date(value, format="long", locale=lang)


def _not_found(request: Request[Any, Any, Any]) -> Response[str]:
    lang = surveys.language_of(
        request.query_params.get("lang") or request.headers.get("accept-language")
    )
    words = surveys.text(lang)
    return _page(
        "survey_message.html",
        lang,
        404,
        heading=words["not_found_title"],
        message=words["not_found"],
    )


def _closed(language: str, expires_at: datetime) -> Response[str]:
    words = surveys.text(language)
    return _page(
        "survey_message.html",
        language,
        410,
        heading=words["closed_title"],
        message=words["closed"].format(date=_date(expires_at, language)),
    )


def _form(
    survey: SatisfactionSurvey,
    *,
    score: int | None,
    comment: str | None,
    error: str | None = None,
    status: int = 200,
) -> Response[str]:
    return _page(
        "survey.html",
        survey.language,
        status,
        survey=survey,
        score=score,
        comment=comment,
        error=error,
        comment_max=surveys.COMMENT_MAX,
    )


def _preselected(value: str | None) -> int | None:
    if value and value.isascii() and value.isdigit() and int(value) in surveys.SCORES:
        return int(value)
    return None


@get("/survey/{token:str}", include_in_schema=False)
async def survey_page(request: Request[Any, Any, Any], token: FromPath[str]) -> Response[str]:
    rt = _runtime(request)
    survey = await surveys.find_by_token(rt, token)
    if survey is None:
        return _not_found(request)
    if surveys.expired(survey, rt.clock.now()):
        return _closed(survey.language, survey.expires_at)
    score = _preselected(request.query_params.get("score"))
    return _form(survey, score=score or survey.score, comment=survey.comment)


@post(
    "/survey/{token:str}",
    include_in_schema=False,
    status_code=200,
    request_max_body_size=MAX_BODY,
)
async def survey_answer(request: Request[Any, Any, Any], token: FromPath[str]) -> Response[str]:
    rt = _runtime(request)
    survey = await surveys.find_by_token(rt, token)
    if survey is None:
        return _not_found(request)
    words = surveys.text(survey.language)
    try:
        form = await request.form()
    except RequestEntityTooLarge:
        return _page(
            "survey_message.html",
            survey.language,
            413,
            heading=words["title"],
            message=words["too_large"],
        )
    except ClientException:
        form = None
    score = form.get("score") if form is not None else None
    comment = form.get("comment") if form is not None else None
    try:
        survey = await surveys.record_answer(rt, token=token, score=score, comment=comment)
    except surveys.SurveyNotFound:
        return _not_found(request)
    except surveys.SurveyClosed as exc:
        return _closed(exc.language, exc.expires_at)
    except surveys.AnswerError as exc:
        message = (
            words["bad_score"]
            if exc.field == "score"
            else words["bad_comment"].format(n=surveys.COMMENT_MAX)
        )
        return _form(
            survey,
            score=_preselected(score if isinstance(score, str) else None),
            comment=comment if isinstance(comment, str) else None,
            error=message,
            status=400,
        )
    return _page(
        "survey_thanks.html",
        survey.language,
        survey=survey,
        until=_date(survey.expires_at, survey.language),
    )


route_handlers = [survey_page, survey_answer]
