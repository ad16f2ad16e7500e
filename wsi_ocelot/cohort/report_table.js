// report.html's slide table: rows from the page's JSON (#slides-data), drawn one page at a time.
// Sorts by any column (a header click; again: the other way; empty values last), filters by text
// (slide, path, message) and by status, and pages. No framework, no network: the page works from
// file://. Every value goes in through textContent or setAttribute, so slide names stay inert.
(function () {
  'use strict';
  var data = JSON.parse(document.getElementById('slides-data').textContent);
  var table = document.getElementById('slides');
  var body = table.tBodies[0];
  var heads = table.tHead.rows[0].cells;
  var rows = data.rows.map(function (a) {
    var o = {};
    for (var i = 0; i < data.cols.length; i++) o[data.cols[i]] = a[i];
    o._label = o.skipped ? 'skipped' : o.status || 'failed'; // no status: as the manifest counts it
    o._text = [o.slide_id, o.path, o.error].join('\n').toLowerCase();
    return o;
  });
  var spanKeys = {};
  data.span.forEach(function (k) { spanKeys[k] = true; });
  var titles = data.status_titles;
  var state = { key: null, asc: true, text: '', status: '', page: 0 };
  var view = rows;
  var textBox = document.getElementById('filter-text');
  var statusBox = document.getElementById('filter-status');
  var shownBox = document.getElementById('shown');
  var prev = document.getElementById('page-prev');
  var next = document.getElementById('page-next');

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  function value(r, k) {
    var v = k === 'status' ? r._label : r[k];
    return v === null || v === undefined || v === '' ? null : v;
  }
  function compare(k, asc) {
    return function (a, b) {
      var x = value(a, k), y = value(b, k);
      if (x === null && y === null) return 0;
      if (x === null) return 1;
      if (y === null) return -1;
      if (typeof x === 'string') x = x.toLowerCase();
      if (typeof y === 'string') y = y.toLowerCase();
      return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
    };
  }
  function errorShown(r) {
    var full = String(r.error || ''), path = String(r.path || '');
    return path && full.indexOf(path + ': ') === 0 ? full.slice(path.length + 2) : full;
  }
  function numberText(v, fmt) {
    if (fmt === '%') return (100 * v).toFixed(1) + ' %';
    if (fmt === 'd') return Math.trunc(v).toLocaleString('en-US');
    return v.toFixed(Number(fmt));
  }
  function cell(r, col) {
    var k = col[0], fmt = col[1], td;
    if (k === 'overview') {
      td = el('td', 'l');
      if (r.overview) {
        var a = el('a'), img = el('img', 'ov');
        var href = encodeURIComponent(r.slide_id) + '/overview.png';
        a.setAttribute('href', href);
        img.setAttribute('loading', 'lazy');
        img.setAttribute('alt', 'overview of ' + r.slide_id);
        img.setAttribute('src', href);
        a.appendChild(img);
        td.appendChild(a);
      }
      return td;
    }
    var v = value(r, k);
    td = el('td', fmt === 's' ? 'l' : fmt === '%' ? 'pur' : '');
    td.setAttribute('data-k', k);
    td.setAttribute('data-v', v === null ? '' : String(v));
    if (v === null) {
      if (k === 'purity' && r.purity_reason) {
        var na = el('span', null, 'n/a');
        na.title = r.purity_reason;
        na.appendChild(el('span', 'why', r.purity_reason));
        td.appendChild(na);
      }
      return td;
    }
    if (k === 'slide_id') {
      var s = el('span', null, v);
      s.title = v + (r.path ? '\n' + r.path : '');
      td.appendChild(s);
    } else if (k === 'status') {
      td.className = 'l st-' + v;
      td.textContent = v;
      if (titles[v]) td.title = titles[v];
    } else if (fmt === 's') {
      td.textContent = v;
    } else {
      td.textContent = numberText(Number(v), fmt);
    }
    return td;
  }
  function errorCell(r) {
    var td = el('td', 'err'), d = el('details'), s = el('summary', null, errorShown(r));
    td.colSpan = data.span.length;
    td.setAttribute('data-k', 'error');
    td.setAttribute('data-v', String(r.error));
    s.title = String(r.error);
    d.appendChild(s);
    td.appendChild(d);
    return td;
  }
  function rowOf(r) {
    var tr = el('tr', r._label === 'done' ? null : r._label);
    var spans = r.status !== 'done' && r.error;
    data.table.forEach(function (col) {
      if (spans && spanKeys[col[0]]) {
        if (col[0] === data.span[0]) tr.appendChild(errorCell(r));
      } else {
        tr.appendChild(cell(r, col));
      }
    });
    return tr;
  }
  function draw() {
    var pages = Math.max(1, Math.ceil(view.length / data.page));
    state.page = Math.min(state.page, pages - 1);
    var first = state.page * data.page, last = Math.min(view.length, first + data.page);
    var frag = document.createDocumentFragment();
    for (var i = first; i < last; i++) frag.appendChild(rowOf(view[i]));
    body.replaceChildren(frag);
    var n = view.length.toLocaleString('en-US'), all = rows.length.toLocaleString('en-US');
    shownBox.textContent = (view.length ? 'rows ' + (first + 1).toLocaleString('en-US') + '–' +
      last.toLocaleString('en-US') + ' of ' + n : 'no rows') +
      (view.length === rows.length ? ' slides' : ' shown (' + all + ' slides)') +
      (pages > 1 ? ' · page ' + (state.page + 1) + ' of ' + pages : '');
    prev.disabled = state.page === 0;
    next.disabled = state.page >= pages - 1;
    table.setAttribute('data-drawn', String(last - first));
  }
  function update() {
    var t = state.text, st = state.status;
    view = rows.filter(function (r) {
      return (!st || r._label === st) && (!t || r._text.indexOf(t) !== -1);
    });
    if (state.key) view.sort(compare(state.key, state.asc));
    state.page = 0;
    draw();
  }
  for (var h = 0; h < heads.length; h++) {
    if (heads[h].classList.contains('nosort')) continue;
    heads[h].addEventListener('click', function () {
      var k = this.getAttribute('data-k');
      state.asc = state.key === k ? !state.asc : true;
      state.key = k;
      for (var j = 0; j < heads.length; j++) heads[j].classList.remove('sorted-asc', 'sorted-desc');
      this.classList.add(state.asc ? 'sorted-asc' : 'sorted-desc');
      update();
    });
  }
  textBox.addEventListener('input', function () { state.text = this.value.trim().toLowerCase(); update(); });
  statusBox.addEventListener('change', function () { state.status = this.value; update(); });
  prev.addEventListener('click', function () { state.page -= 1; draw(); });
  next.addEventListener('click', function () { state.page += 1; draw(); });
  document.getElementById('table-controls').hidden = false;
  update();
  window.reportTableDrawnMs = performance.now();
})();
