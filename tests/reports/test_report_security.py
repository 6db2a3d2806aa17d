"""Every string from the run is escaped: hostile layer, tensor, feature, class and run names
(and evidence keys, plot labels, a rule id) cannot add an element, an attribute or a script."""

from __future__ import annotations

from _html_check import ALLOWED_TAGS, ParsedPage
from _report_samples import HOSTILE_FEATURE, HOSTILE_LAYERS, hostile_result

from trainaudit.reports import render_html
from trainaudit.reports._script import SCRIPT


def _page():
    html = render_html(hostile_result())
    return html, ParsedPage(html)


def test_no_injected_element_or_attribute():
    html, page = _page()
    tags = {t for t, _ in page.tags}
    assert tags <= ALLOWED_TAGS, tags - ALLOWED_TAGS
    assert "img" not in tags
    handlers = [(t, k) for t, k, _ in page.attributes() if k.startswith("on")]
    assert handlers == []
    assert not any(k == "src" for _, k, _ in page.attributes())
    for tag, key, value in page.attributes():
        if key == "href" and value is not None:
            assert value.startswith(("#", "data:")), (tag, value)


def test_only_our_script_runs():
    _, page = _page()
    assert page.scripts == [SCRIPT]


def test_hostile_strings_are_shown_as_text():
    html, page = _page()
    text = page.all_text
    for s in (*HOSTILE_LAYERS, HOSTILE_FEATURE):
        assert s in text  # shown to the reader, literally
    assert "<script>alert(1)</script>" not in html
    assert "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in html
    assert "feat &quot;quoted&quot; &amp; &#x27;single&#x27; &amp;&amp;" in html


def test_hostile_rule_id_gets_a_safe_unique_anchor():
    _, page = _page()
    ids = page.ids()
    assert len(ids) == len(set(ids))
    rule_ids = [i for i in ids if i.startswith("rule-")]
    assert all(i.replace("-", "").replace("_", "").isalnum() for i in rule_ids)
    hrefs = {v[1:] for _, k, v in page.attributes() if k == "href" and v and v.startswith("#")}
    assert hrefs <= set(ids)
