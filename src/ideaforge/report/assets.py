"""The report's stylesheet and script, inlined into every page (the report must open offline)."""

CSS = """
:root{--fg:#0f172a;--muted:#64748b;--line:#e2e8f0;--bg:#fff;--soft:#f8fafc;--accent:#2563eb}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:var(--fg);background:var(--bg)}
#content{max-width:1240px;margin:0 auto;padding:20px 24px 60px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 10px;padding-bottom:4px;border-bottom:1px solid var(--line)}
h4{font-size:13px;margin:14px 0 6px}
.sub{color:var(--muted);font-weight:400;font-size:.8em}
.meta,.hint,.origin,.lineage-row{color:var(--muted);margin:2px 0}
.envdesc{max-width:900px;color:#334155;margin:8px 0 0;white-space:pre-wrap}
a{color:var(--accent);text-decoration:none}a:hover{text-decoration:underline}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(175px,1fr));gap:8px}
.card{border:1px solid var(--line);border-radius:8px;padding:8px 10px;background:var(--soft)}
.warn{border:1px solid #c0392b;background:#fdecea;color:#7b1f16;border-radius:8px;padding:8px 10px}
.card .k{font-size:11px;text-transform:uppercase;letter-spacing:.04em;color:var(--muted)}
.card .v{font-weight:600;overflow-wrap:anywhere}
.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:14px}
figure{margin:0;border:1px solid var(--line);border-radius:8px;padding:8px 10px}
figcaption{font-size:12px;color:var(--muted);margin-bottom:4px}figcaption b{color:var(--fg);font-size:13px}
svg.plot{max-width:100%;height:auto;display:block;font-size:11px}
svg .grid{stroke:#eef2f7}svg .axis{stroke:#94a3b8}
svg .tick{fill:#64748b;font-size:10px}svg .label{fill:#334155;font-size:11px}
svg .legend{fill:#334155;font-size:10.5px}svg .empty{fill:#94a3b8;font-size:13px}
svg .band{fill:#94a3b8;fill-opacity:.22}svg .baseline{stroke:#64748b;stroke-dasharray:5 4;stroke-width:1.3}
svg .series{fill:none;stroke-width:2.2}svg .series.thin{stroke-width:1.5;stroke-opacity:.85}
svg .dot{fill:#2563eb;fill-opacity:.7;stroke:#fff;stroke-width:.8}svg a:hover .dot{fill:#dc2626;fill-opacity:1}
svg .box{fill:#dbeafe;fill-opacity:.6;stroke:#93c5fd}svg .median{stroke:#1d4ed8;stroke-width:2}
svg .rate{fill:#16a34a;fill-opacity:.8}svg .barlabel{fill:#334155;font-size:10px}
table{border-collapse:collapse;width:100%;margin:6px 0}
th,td{border-bottom:1px solid var(--line);padding:4px 8px;text-align:left;vertical-align:top}
th{font-size:12px;color:var(--muted);font-weight:600;background:var(--soft)}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
caption{text-align:left;color:var(--muted);padding:2px 0 6px;caption-side:top}
#leaderboard tr.beats td{background:#f0fdf4}
table.small{font-size:12.5px}
#models,details.attempts table{width:auto;min-width:50%}
td.reason{max-width:480px;overflow-wrap:anywhere;white-space:pre-wrap}
.badge{display:inline-block;font-size:11px;padding:1px 7px;border-radius:10px;background:#f1f5f9;color:#334155;
 border:1px solid #e2e8f0;white-space:nowrap;font-weight:500}
.badge.kind{background:#eef2ff;color:#3730a3;border-color:#e0e7ff}.badge.win{background:#dcfce7;color:#166534;border-color:#bbf7d0}
.o-evaluated,.o-ok{background:#dcfce7!important;color:#166534!important}.o-implement_failed{background:#f3e8ff!important;color:#6b21a8!important}
.o-failed,.o-crash,.o-invalid{background:#fee2e2!important;color:#991b1b!important}
.o-timeout,.o-oom,.o-diverged{background:#ffedd5!important;color:#9a3412!important}
.o-running{background:#dbeafe!important;color:#1e40af!important}
.badge.live{background:#dcfce7;color:#166534;vertical-align:middle}.badge.live.off{background:#fee2e2;color:#991b1b}
details.idea{border:1px solid var(--line);border-radius:8px;margin:6px 0;background:#fff}
details.idea>summary{cursor:pointer;padding:7px 10px;list-style-position:inside}
details.idea[open]>summary{border-bottom:1px solid var(--line);background:var(--soft);border-radius:8px 8px 0 0}
details.idea:target{box-shadow:0 0 0 2px #93c5fd}
.iid{color:var(--muted);font-variant-numeric:tabular-nums}.ititle{font-weight:600}
.score{font-variant-numeric:tabular-nums;margin-left:4px}
.body{padding:6px 14px 12px}
.desc{white-space:pre-wrap;max-width:980px}
pre{font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;margin:4px 0}
pre.diff,pre.log,pre.error{background:#f8fafc;border:1px solid var(--line);border-radius:6px;padding:8px 0;overflow:auto;max-height:560px}
pre.log,pre.error{padding:8px 10px;max-height:360px}pre.error{background:#fef2f2;border-color:#fecaca}
pre.cell{white-space:pre-wrap;margin:0;max-width:640px}
pre.diff span{display:block;padding:0 10px;white-space:pre}
.d-add{background:#dcfce7;color:#14532d}.d-del{background:#fee2e2;color:#7f1d1d}
.d-hunk{background:#eff6ff;color:#1e40af}.d-file{color:#334155;font-weight:700}.d-ctx{color:#334155}
details.log>summary,details.attempts>summary{cursor:pointer;color:var(--muted);font-size:12.5px;margin-top:4px}
.curve{margin:8px 0}
button{font:inherit;font-size:12px;border:1px solid var(--line);background:#fff;border-radius:6px;padding:2px 8px;cursor:pointer}
p.empty{color:var(--muted)}
"""

# Opens the idea named by the URL hash; loads an opened idea's details (a script beside the
# page, or from the live server, that calls ideaforgeDetail); in the live view
# (body[data-live="1"]) polls api/state every 2 s and, when its version changes, swaps
# #content for the fresh page's, keeping open <details> open.
JS = """
(function(){
  window.ideaforgeDetail = function(id, html){
    var el = document.getElementById('detail-' + id);
    if (el) { el.innerHTML = html; el.dataset.loaded = '1'; }
  };
  var requested = {};  // script URL -> true: one script may hold the details of many ideas
  function load(d){
    var el = d.querySelector('.detail[data-src]');
    if (!el || el.dataset.loaded) return;
    var src = el.dataset.src;
    if (requested[src]) return;
    requested[src] = true;
    var s = document.createElement('script');
    s.src = src;
    s.onload = s.onerror = function(){
      s.remove();
      delete requested[src];
      if (!el.dataset.loaded) el.textContent = 'could not load ' + src;
    };
    document.head.appendChild(s);
  }
  document.addEventListener('toggle', function(ev){
    var d = ev.target;
    if (d.classList && d.classList.contains('idea') && d.open) load(d);
  }, true);  // toggle does not bubble: listen while it is captured
  function openHash(){
    var h = decodeURIComponent(location.hash || '');
    if (h.indexOf('#idea-') !== 0) return;
    var el = document.getElementById(h.slice(1));
    if (el) { el.open = true; el.scrollIntoView({block: 'start'}); }
  }
  window.addEventListener('hashchange', openHash);
  document.addEventListener('click', function(ev){
    var t = ev.target;
    if (t && (t.id === 'expand-all' || t.id === 'collapse-all')) {
      var open = t.id === 'expand-all';
      document.querySelectorAll('details.idea').forEach(function(d){ d.open = open; });
    }
  });
  openHash();
  if (document.body.dataset.live !== '1') return;
  var version = document.body.dataset.version, busy = false;
  function badge(text, off){
    var el = document.getElementById('live-status');
    if (el) { el.textContent = text; el.className = 'badge live' + (off ? ' off' : ''); }
  }
  async function tick(){
    if (busy) return;
    busy = true;
    try {
      var st = await (await fetch('api/state', {cache: 'no-store'})).json();
      if (st.version !== version) {
        var html = await (await fetch('./', {cache: 'no-store'})).text();
        var doc = new DOMParser().parseFromString(html, 'text/html');
        var fresh = doc.getElementById('content');
        if (fresh) {
          var open = Array.prototype.map.call(document.querySelectorAll('details[open][id]'), function(d){ return d.id; });
          document.getElementById('content').innerHTML = fresh.innerHTML;
          open.forEach(function(id){ var d = document.getElementById(id); if (d) d.open = true; });
          version = doc.body.dataset.version;
          document.body.dataset.version = version;
        }
      }
      badge('live · ' + st.trials_done + ' trials done · ' + new Date().toLocaleTimeString(), false);
    } catch (e) {
      badge('live · no connection', true);
    } finally {
      busy = false;
    }
  }
  setInterval(tick, 2000);
})();
"""
