"""The report's stylesheet: light and dark schemes (``prefers-color-scheme``), print rules.

Colours are CSS custom properties, so the inline SVG plots (which use classes, never literal
colours) follow the scheme. Status colours carry meaning on their own *and* come with a word
(``critical``, ``ok``...), so the page also reads in grey print and for the colour-blind.
"""

from __future__ import annotations

__all__ = ["CSS"]

CSS = """
:root{color-scheme:light dark;
--bg:#f6f6f3;--fg:#1c1e21;--card:#ffffff;--line:#d9d9d4;--muted:#5f6368;--soft:#eef0f2;
--crit:#c0392b;--warn:#b8730a;--info:#1f6fb8;--ok:#2e7d32;--ne:#6d6a8a;--err:#a0246a;
--crit-bg:#fbe9e7;--warn-bg:#fff4de;--info-bg:#e7f1fb;--ok-bg:#e8f4e8;--ne-bg:#efeef5;--err-bg:#f9e6f0;
--c0:#1f77b4;--c1:#e8710a;--c2:#2a9d3a;--c3:#d62728;--c4:#8e62c4;--c5:#8c564b;--c6:#d4529f;--c7:#119fb0;
--grid:#e4e4e0;--axis:#80868b;--cell:#1f6fb8;--bar:#4a7fb5;--bad:#e41a1c}
@media (prefers-color-scheme:dark){:root{
--bg:#131518;--fg:#e3e5e8;--card:#1c1f24;--line:#33383f;--muted:#a0a6ad;--soft:#262a30;
--crit:#ff6b5e;--warn:#f4b03e;--info:#6cb2ff;--ok:#6cc46f;--ne:#aaa7cc;--err:#f06bb0;
--crit-bg:#3a1d1a;--warn-bg:#352a14;--info-bg:#17293d;--ok-bg:#1a2e1b;--ne-bg:#26253a;--err-bg:#3a1a2c;
--c0:#5aa9e6;--c1:#ff9f45;--c2:#5fd068;--c3:#ff6b6b;--c4:#b692ef;--c5:#c9937f;--c6:#f08ac6;--c7:#4fd3e3;
--grid:#2b3036;--axis:#8a9096;--cell:#6cb2ff;--bar:#6a9fd8;--bad:#ff4d4f}}
*{box-sizing:border-box}
html{background:var(--bg);color:var(--fg)}
body{margin:0 auto;max-width:1200px;padding:18px 20px 40px;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans",sans-serif}
a{color:var(--info)}
h1{font-size:22px;margin:2px 0 4px;word-break:break-all}
h2{font-size:18px;margin:28px 0 10px;padding-bottom:4px;border-bottom:1px solid var(--line)}
h3{font-size:16px;margin:0 0 6px;display:flex;flex-wrap:wrap;gap:8px;align-items:center}
h4{font-size:13px;margin:8px 0 4px;text-transform:uppercase;letter-spacing:.04em;color:var(--muted)}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
.brand{font-size:12px;color:var(--muted);text-transform:uppercase;letter-spacing:.08em}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px 14px}
.top{display:grid;grid-template-columns:minmax(300px,1.1fr) minmax(280px,1fr);gap:14px;margin-top:10px}
@media (max-width:860px){.top{grid-template-columns:1fr}}
.verdict{border-left:8px solid var(--v);background:var(--vbg)}
.v-critical{--v:var(--crit);--vbg:var(--crit-bg)}.v-warning{--v:var(--warn);--vbg:var(--warn-bg)}
.v-info{--v:var(--info);--vbg:var(--info-bg)}.v-healthy{--v:var(--ok);--vbg:var(--ok-bg)}
.v-unknown{--v:var(--ne);--vbg:var(--ne-bg)}
.vword{font-size:30px;font-weight:800;letter-spacing:.04em;color:var(--v);line-height:1.1}
.vline{margin:4px 0 10px;font-size:15px}
.counts{display:flex;flex-wrap:wrap;gap:6px;margin:0;padding:0;list-style:none}
.counts li{border-radius:999px;padding:3px 10px;font-weight:600;font-size:13px;border:1px solid var(--line);background:var(--card)}
.counts li{color:var(--bc)}
.counts li b{font-size:15px;margin-right:3px}
.counts .zero{opacity:.55;font-weight:400}
.fired{margin:10px 0 0;padding-left:18px}
.fired li{margin:2px 0}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:3px 12px;margin:0}
dl.facts dt{color:var(--muted)}
dl.facts dd{margin:0;word-break:break-word}
.badge{display:inline-block;border-radius:4px;padding:1px 7px;font-size:12px;font-weight:700;
  text-transform:uppercase;letter-spacing:.03em;color:var(--bc);background:var(--bbg);border:1px solid var(--bc);white-space:nowrap}
.sev-critical{--bc:var(--crit);--bbg:var(--crit-bg)}.sev-warning{--bc:var(--warn);--bbg:var(--warn-bg)}
.sev-info{--bc:var(--info);--bbg:var(--info-bg)}
.st-ok{--bc:var(--ok);--bbg:var(--ok-bg)}.st-not_evaluable{--bc:var(--ne);--bbg:var(--ne-bg)}
.st-error{--bc:var(--err);--bbg:var(--err-bg)}.st-triggered{--bc:var(--crit);--bbg:var(--crit-bg)}
.badge.dim{opacity:.6;font-weight:600}
.chips{display:flex;flex-wrap:wrap;gap:4px;margin:2px 0}
.chip{background:var(--soft);border-radius:4px;padding:0 6px;font-size:12.5px}
.chip.miss{text-decoration:line-through;opacity:.75}
.top+#coverage{margin-top:14px}
.warnbox{border-left:4px solid var(--warn);background:var(--warn-bg);padding:6px 10px;border-radius:4px;margin:8px 0}
.controls{display:flex;flex-wrap:wrap;gap:8px;align-items:center;margin:0 0 8px}
.controls input,.controls select{font:inherit;padding:4px 8px;border:1px solid var(--line);border-radius:6px;background:var(--card);color:var(--fg)}
.controls input{min-width:220px}
.controls .count{color:var(--muted);font-size:13px}
.tablewrap{overflow-x:auto}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;vertical-align:top;padding:5px 8px;border-bottom:1px solid var(--line)}
th{font-size:12px;text-transform:uppercase;letter-spacing:.03em;color:var(--muted);white-space:nowrap}
th button{all:unset;cursor:pointer}
th button:focus-visible{outline:2px solid var(--info)}
th[aria-sort=ascending] button::after{content:" ▲"}th[aria-sort=descending] button::after{content:" ▼"}
#rule-table tbody tr:hover{background:var(--soft)}
#rule-table tr.row-triggered td:first-child{box-shadow:inset 4px 0 var(--bc)}
td.msg{min-width:260px}
td.tens{max-width:220px;word-break:break-word;font-size:12.5px}
td.num{white-space:nowrap}
.finding{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:14px 16px;margin:0 0 14px;
  border-left:6px solid var(--bc);scroll-margin-top:10px}
.finding .msg{font-size:15px;margin:4px 0 8px}
.finding:target{outline:3px solid var(--info)}
.finding.small{padding:8px 12px;margin-bottom:8px}
.finding.small .msg{font-size:14px;margin:2px 0}
.explain{display:grid;grid-template-columns:1fr 1fr;gap:14px;margin-top:6px}
@media (max-width:760px){.explain{grid-template-columns:1fr}}
.explain p{margin:0}
.fix{border-left:3px solid var(--ok);padding-left:10px}
.problem{border-left:3px solid var(--line);padding-left:10px}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(520px,100%),1fr));gap:12px;margin:10px 0}
.fig{margin:0;background:var(--card);border:1px solid var(--line);border-radius:6px;padding:8px 10px;break-inside:avoid}
.fig figcaption{font-weight:600;font-size:13.5px}
.fignote{color:var(--muted);font-size:12px;margin:2px 0 0}
.legend{list-style:none;margin:2px 0 4px;padding:0;display:flex;flex-wrap:wrap;gap:2px 12px;font-size:12px;color:var(--muted)}
.sw{display:inline-block;width:14px;height:4px;margin-right:5px;vertical-align:middle;background:var(--sc)}
svg.plot{width:100%;height:auto;display:block;font:11px system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;overflow:visible}
svg.plot .axis{stroke:var(--axis);stroke-width:1}
svg.plot .grid{stroke:var(--grid);stroke-width:1}
svg.plot .tickmark{stroke:var(--axis)}
svg.plot text{fill:var(--fg)}
svg.plot .tick{fill:var(--muted)}
svg.plot .alabel{fill:var(--fg);font-weight:600}
svg.plot .ln{fill:none;stroke-width:1.6;stroke:var(--sc);stroke-linejoin:round}
svg.plot .pt{fill:var(--sc)}
.s0{--sc:var(--c0)}.s1{--sc:var(--c1)}.s2{--sc:var(--c2)}.s3{--sc:var(--c3)}
.s4{--sc:var(--c4)}.s5{--sc:var(--c5)}.s6{--sc:var(--c6)}.s7{--sc:var(--c7)}
svg.plot .nonfinite{fill:var(--bad)}
.nonfinite-sw{--sc:var(--bad);height:10px;width:10px}
.nonpos-sw{--sc:#bebebe;height:10px;width:10px}
.ramp-sw{background:linear-gradient(90deg,#440154,#3b518b,#21908d,#5cc863,#fde725);height:10px;width:40px}
svg.plot .marker line{stroke:var(--fg);stroke-dasharray:4 3;stroke-width:1.2;opacity:.75}
svg.plot .marker text{font-weight:600;font-size:10.5px;paint-order:stroke;stroke:var(--card);stroke-width:3px}
.marker-sw{--sc:var(--fg);height:0;border-top:2px dashed var(--fg);background:none}
svg.plot .frame{fill:none;stroke:var(--axis)}
svg.plot .hit{fill:transparent}
svg.plot .hit:hover{fill:var(--fg);fill-opacity:.12}
svg.plot image.heat{image-rendering:pixelated}
svg.plot .bar{fill:var(--bar)}
svg.plot .val{fill:var(--muted);font-size:10.5px}
svg.plot .val.bad{fill:var(--bad);font-weight:700}
svg.plot .threshold{stroke:var(--crit);stroke-dasharray:5 3;stroke-width:1.5}
.threshold-sw{height:0;border-top:2px dashed var(--crit);background:none}
svg.plot .cell{fill:var(--cell);stroke:var(--card);stroke-width:1}
svg.plot .cell.diag{stroke:var(--fg);stroke-width:1.2}
svg.plot .cv{font-size:10px;fill:var(--fg)}svg.plot .cv.light{fill:#fff}
.cell-sw{--sc:var(--cell);height:10px}
svg.plot .band{fill:var(--c0);stroke:none}
svg.plot .band.b0{fill-opacity:.14}svg.plot .band.b1{fill-opacity:.22}svg.plot .band.b2{fill-opacity:.3}svg.plot .band.b3{fill-opacity:.38}
.band-sw{--sc:var(--c0);height:10px}.band-sw.b0{opacity:.3}.band-sw.b1{opacity:.45}.band-sw.b2{opacity:.6}.band-sw.b3{opacity:.75}
table.ev{width:auto;max-width:100%;font-size:13px;margin:4px 0}
table.ev th{text-transform:none;letter-spacing:0;font-size:12.5px;color:var(--muted);font-weight:600;white-space:normal}
table.ev td,table.ev th{padding:2px 10px 2px 0}
.nf{color:var(--bad);font-weight:700}
.more{color:var(--muted);font-style:italic}
details>summary{cursor:pointer;color:var(--muted);font-size:13px;margin:6px 0}
nav.toc{display:flex;flex-wrap:wrap;gap:14px;font-size:13px;margin:12px 0 0}
footer{margin-top:30px;color:var(--muted);font-size:12px;border-top:1px solid var(--line);padding-top:8px}
.group-title{font-size:15px;margin:18px 0 8px;color:var(--muted)}
.small-grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(360px,100%),1fr));gap:0 12px;align-items:start}
.small-grid>.finding:has(details[open]){grid-column:1/-1}
@media print{
 :root{color-scheme:light;--bg:#fff;--fg:#000;--card:#fff;--line:#bbb;--muted:#444;--soft:#f0f0f0;
  --crit:#b00020;--warn:#9a5b00;--info:#0b57a4;--ok:#1b6e20;--ne:#555;--err:#8a1050;
  --crit-bg:#fff;--warn-bg:#fff;--info-bg:#fff;--ok-bg:#fff;--ne-bg:#fff;--err-bg:#fff;
  --c0:#1f77b4;--c1:#e8710a;--c2:#2a9d3a;--c3:#d62728;--c4:#8e62c4;--c5:#8c564b;--c6:#d4529f;--c7:#119fb0;
  --grid:#ddd;--axis:#666;--cell:#1f6fb8;--bar:#4a7fb5;--bad:#e41a1c}
 body{max-width:none;padding:0;font-size:11pt}
 .controls,nav.toc,svg.plot .hit{display:none}
 .finding,.fig,.card,tr{break-inside:avoid}
 h2{break-after:avoid}
 a{color:inherit;text-decoration:none}
 #rule-table tr[hidden]{display:table-row}
}
"""
