"""Parse a report with the standard library's HTML parser: tags, attributes, scripts, text."""

from __future__ import annotations

from html.parser import HTMLParser

#: Every element the report writes. Anything else in a parsed report was injected.
ALLOWED_TAGS = frozenset(
    ["html", "head", "meta", "link", "title", "style", "body", "div", "h1", "h2", "h3", "h4", "p", "nav", "a", "section", "ul", "li", "span", "b", "code", "dl", "dt", "dd", "table", "thead", "tbody", "tr", "th", "td", "details", "summary", "figure", "figcaption", "footer", "input", "select", "option", "button", "script", "svg", "line", "text", "path", "rect", "circle", "g", "polygon", "image"]
)


class ParsedPage(HTMLParser):
    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[str] = []
        self.text: list[str] = []
        self._in_script = False
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"
        if tag == "script":
            self.scripts.append("")

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data
        else:
            self.text.append(data)

    @property
    def all_text(self) -> str:
        return "".join(self.text)

    def attributes(self) -> list[tuple[str, str, str | None]]:
        return [(tag, k, v) for tag, attrs in self.tags for k, v in attrs.items()]

    def ids(self) -> list[str]:
        return [v for _, k, v in self.attributes() if k == "id" and v is not None]
