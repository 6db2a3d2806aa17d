"""The report's one inline script: sort and filter the rule table, open details to print.

The page's Content-Security-Policy allows exactly this script (by its SHA-256), so even text
that escaped escaping could not run. It reads no data from the run and needs no network. The
page is fully readable without it.
"""

from __future__ import annotations

import base64
import hashlib

__all__ = ["SCRIPT", "script_hash"]

SCRIPT = """
(function () {
  "use strict";
  var each = function (list, fn) { Array.prototype.forEach.call(list, fn); };
  var table = document.getElementById("rule-table");
  if (table && table.tBodies.length) {
    var tbody = table.tBodies[0];
    var rows = Array.prototype.slice.call(tbody.rows);
    var q = document.getElementById("rule-filter");
    var st = document.getElementById("status-filter");
    var sv = document.getElementById("severity-filter");
    var count = document.getElementById("rule-count");
    var apply = function () {
      var text = q.value.trim().toLowerCase(), s = st.value, v = sv.value, shown = 0;
      rows.forEach(function (r) {
        var rs = r.getAttribute("data-status");
        var ok = (!text || r.textContent.toLowerCase().indexOf(text) !== -1) &&
          (s === "all" || (s === "attention" ? rs !== "ok" : rs === s)) &&
          (v === "all" || (rs === "triggered" && r.getAttribute("data-severity") === v));
        r.hidden = !ok;
        if (ok) { shown += 1; }
      });
      count.textContent = shown === rows.length ? rows.length + " rules"
        : "showing " + shown + " of " + rows.length + " rules";
    };
    [q, st, sv].forEach(function (el) {
      el.addEventListener("input", apply);
      el.addEventListener("change", apply);
    });
    var heads = table.tHead.rows[0].cells;
    each(heads, function (th, col) {
      var button = th.querySelector("button");
      if (!button) { return; }
      button.addEventListener("click", function () {
        var dir = th.getAttribute("aria-sort") === "ascending" ? "descending" : "ascending";
        each(heads, function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", dir);
        var numeric = th.getAttribute("data-type") === "num";
        var sign = dir === "ascending" ? 1 : -1;
        var key = function (r) {
          var c = r.cells[col], k = c.getAttribute("data-sort");
          if (k === null) { k = c.textContent; }
          return numeric ? parseFloat(k) : k.toLowerCase();
        };
        var order = function (r) { return parseInt(r.getAttribute("data-i"), 10); };
        rows.sort(function (a, b) {
          var x = key(a), y = key(b), c = 0;
          if (numeric) {
            var xn = isNaN(x), yn = isNaN(y);
            c = (xn || yn) ? (xn - yn) : sign * (x - y);
          } else {
            c = sign * (x < y ? -1 : (x > y ? 1 : 0));
          }
          return c || (order(a) - order(b));
        });
        rows.forEach(function (r) { tbody.appendChild(r); });
      });
    });
    apply();
  }
  var openAll = function () {
    each(document.querySelectorAll("details"), function (d) { d.open = true; });
  };
  window.addEventListener("beforeprint", openAll);
  var openTarget = function () {
    var id = "";
    try { id = decodeURIComponent(window.location.hash.slice(1)); } catch (e) { return; }
    var el = id ? document.getElementById(id) : null;
    if (el) { each(el.querySelectorAll("details"), function (d) { d.open = true; }); }
  };
  window.addEventListener("hashchange", openTarget);
  openTarget();
}());
"""


def script_hash(script: str = SCRIPT) -> str:
    """The CSP source expression (``'sha256-…'``) that allows exactly ``script``."""
    digest = hashlib.sha256(script.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"
