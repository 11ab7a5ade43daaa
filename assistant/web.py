"""The web UI: pages served by the API itself (no build step, no Node at run time).

    /             chat: streamed answers, conversation history, collection and metadata filters, citations that
                  open the cited passage and the original document, thumbs up/down with reasons and corrections
    /ingest       upload files, follow their ingestion, delete documents
    /evaluation   feedback stats, evaluation reports (eval/results), learned model versions and which is live

Each page is `templates/layout.html` (head, navigation, the voter's id and team) around its own body
(`templates/<page>.html`), assembled once; its script and styles are ES modules and CSS under `static/`, which talk
only to the JSON API. The response headers keep the pages to their own origin (Content-Security-Policy) and out
of frames.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from html import escape
from pathlib import Path
from string import Template

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

HERE = Path(__file__).parent
STATIC = HERE / "static"
TEMPLATES = HERE / "templates"
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True)
class Page:
    path: str
    name: str  # its template and script: templates/<name>.html, static/<name>.js
    nav: str  # its label in the navigation
    title: str
    body_class: str = ""
    skip_to: str = "main"  # where "Skip to the content" goes


PAGES = (
    Page("/", "chat", "Chat", "finrag — ask your filings and regulations", body_class="chat", skip_to="question"),
    Page("/ingest", "ingest", "Documents", "finrag — documents"),
    Page("/evaluation", "evaluation", "Evaluation & feedback", "finrag — evaluation & feedback"),
)


def mount_web(app: FastAPI) -> None:
    """Serve the pages at their paths and their scripts and styles under /static."""
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    for page in PAGES:
        app.add_api_route(page.path, _endpoint(page), methods=["GET", "HEAD"], include_in_schema=False)


@cache
def render(page: Page) -> str:
    """The page's HTML: the layout around its body, its entry in the navigation marked current."""
    current = ' aria-current="page"'
    nav = "\n".join(f'      <li><a href="{p.path}"{current if p == page else ""}>{escape(p.nav)}</a></li>'
                    for p in PAGES)
    layout = Template((TEMPLATES / "layout.html").read_text(encoding="utf-8"))
    return layout.substitute(title=escape(page.title), script=f"{page.name}.js", body_class=page.body_class,
                             skip_to=page.skip_to, nav=nav,
                             content=(TEMPLATES / f"{page.name}.html").read_text(encoding="utf-8"))


def login_html(next_path: str, error: str | None) -> str:
    """The sign-in page (assistant.auth serves it): a form posting the key, `next_path` the page to return to."""
    notice = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    page = Template((TEMPLATES / "login.html").read_text(encoding="utf-8"))
    return page.substitute(next=escape(next_path), error=notice)


def _endpoint(page: Page) -> Callable[[], HTMLResponse]:
    def endpoint() -> HTMLResponse:
        return HTMLResponse(render(page), headers=HEADERS)

    endpoint.__name__ = f"page_{page.name}"
    return endpoint
