// The answers browser: draws every prompt's answers side by side from the page's JSON,
// through textContent only, so an answer's text can never become markup.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("page-data").textContent);
  var variants = data.variants, base = variants[0];
  var PAGE = 250;  // rows drawn at once; a study's 100 prompts are all drawn, 1,000 load as you scroll
  var root = document.getElementById("answers");

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  function option(select, value, text) {
    var o = el("option", null, text);
    o.value = value;
    select.appendChild(o);
  }

  function control(label, node) {
    var l = el("label", null, label);
    l.appendChild(node);
    return l;
  }

  var rows = [];
  data.sections.forEach(function (section, s) {
    section.prompts.forEach(function (p, i) {
      var hay = [p.prompt].concat(p.answers.map(function (a) { return a.text; })).join("\n").toLowerCase();
      rows.push({section: s, index: i, p: p, hay: hay});
    });
  });

  function change(row, v) {  // rating of variant v minus the base's; null where either is unrated
    var a = row.p.answers[v].rating, b = row.p.answers[0].rating;
    return (a === null || a === undefined || b === null || b === undefined) ? null : a - b;
  }

  // ----------------------------------------------------------------- controls
  var sectionSel = el("select"), flipSel = el("select"), refusedSel = el("select"), sortSel = el("select");
  var search = el("input");
  sectionSel.id = "filter-section"; flipSel.id = "filter-flip"; refusedSel.id = "filter-refused";
  sortSel.id = "sort"; search.id = "search";
  search.type = "search";
  search.placeholder = "prompt or answer text";
  option(sectionSel, "", "all");
  data.sections.forEach(function (s) {  // a section, then its prompts' categories where they have them
    option(sectionSel, s.id, s.title + " (" + s.prompts.length + ")");
    var counts = {};
    s.prompts.forEach(function (p) { if (p.category) counts[p.category] = (counts[p.category] || 0) + 1; });
    Object.keys(counts).forEach(function (c) {
      option(sectionSel, s.id + "::" + c, "\u2003" + s.title + ": " + c + " (" + counts[c] + ")");
    });
  });
  option(flipSel, "", "all prompts");
  option(flipSel, "any", "flipped in any variant");
  option(flipSel, "any:gained", "gained in any variant");
  option(flipSel, "any:lost", "lost in any variant");
  option(refusedSel, "", "all prompts");
  option(refusedSel, "any", "refused by some variant");
  option(refusedSel, "none", "refused by none");
  option(sortSel, "prompt", "prompt order");
  option(sortSel, "change", "largest rating change (any variant)");
  variants.forEach(function (v, k) {
    option(refusedSel, v.name, "refused by " + v.label);
    if (k === 0) return;
    option(flipSel, v.name, "flipped: " + v.label);
    option(flipSel, v.name + ":gained", "gained: " + v.label);
    option(flipSel, v.name + ":lost", "lost: " + v.label);
    option(sortSel, v.name + ":up", v.label + " \u2212 " + base.label + ", most gained first");
    option(sortSel, v.name + ":down", v.label + " \u2212 " + base.label + ", most lost first");
  });
  var count = el("span");
  count.id = "match-count";
  var controls = el("div", "controls");
  [control("Section", sectionSel), control("Flipped against " + base.label, flipSel),
   control("Refused", refusedSel), control("Search", search), control("Sort", sortSel), count]
    .forEach(function (n) { controls.appendChild(n); });
  root.appendChild(el("h1", null, data.title));
  root.appendChild(el("p", "note", "Each prompt with every variant's answer. Pass or fail is the answer's rating " +
    "against the study's threshold; gained (green) or lost (red) marks a verdict that differs from " + base.label +
    "'s on the same prompt; refused: " + data.refusal + "."));
  root.appendChild(summaryTable());
  root.appendChild(controls);
  var list = el("div", "list");
  root.appendChild(list);
  var more = el("button", "more");
  more.id = "more";
  root.appendChild(more);

  // Per section and variant, counted from the answers themselves: passes, refusals, flips.
  function summaryTable() {
    var table = el("table", "summary"), head = el("tr");
    table.id = "summary";
    head.appendChild(el("th", null, "section"));
    variants.forEach(function (v) { head.appendChild(el("th", null, v.label)); });
    table.appendChild(head);
    data.sections.forEach(function (s) {
      var tr = el("tr");
      tr.appendChild(el("th", null, s.title + (s.passes ? " (" + s.passes + ")" : "")));
      variants.forEach(function (v, k) {
        var n = s.prompts.length, pass = 0, refused = 0, gained = 0, lost = 0;
        s.prompts.forEach(function (p) {
          var a = p.answers[k];
          pass += a.pass === true; refused += a.refused === true;
          gained += a.flip === "gained"; lost += a.flip === "lost";
        });
        var parts = [];
        if (s.prompts.some(function (p) { return p.answers[k].pass !== null && p.answers[k].pass !== undefined; }))
          parts.push(pass + " / " + n + " pass");
        parts.push(refused + " refused");
        if (k > 0) parts.push(gained + " gained \u00b7 " + lost + " lost");
        var td = el("td", null, parts.join(" \u00b7 "));
        td.dataset.section = s.id; td.dataset.variant = v.name;
        td.dataset.pass = pass; td.dataset.refused = refused; td.dataset.gained = gained; td.dataset.lost = lost;
        tr.appendChild(td);
      });
      table.appendChild(tr);
    });
    return table;
  }

  // ----------------------------------------------------------------- filtering and sorting
  function variantIndex(name) {
    for (var k = 0; k < variants.length; k++) if (variants[k].name === name) return k;
    return -1;
  }

  function keep(row, f) {
    var answers = row.p.answers;
    if (f.section && f.section !== data.sections[row.section].id &&
        f.section !== data.sections[row.section].id + "::" + row.p.category) return false;
    if (f.flip) {
      var parts = f.flip.split(":"), which = parts[0], how = parts[1];
      var ks = which === "any" ? answers.map(function (_, k) { return k; }).slice(1) : [variantIndex(which)];
      if (!ks.some(function (k) { var x = answers[k] && answers[k].flip; return how ? x === how : !!x; })) return false;
    }
    if (f.refused) {
      var any = answers.some(function (a) { return a.refused; });
      if (f.refused === "any" ? !any : f.refused === "none" ? any :
          !(answers[variantIndex(f.refused)] || {}).refused) return false;
    }
    return !f.q || row.hay.indexOf(f.q) >= 0;
  }

  function sortKey(row, sort) {  // larger first; unrated rows last
    if (sort === "change") {
      var best = null;
      for (var k = 1; k < variants.length; k++) {
        var c = change(row, k);
        if (c !== null && (best === null || Math.abs(c) > best)) best = Math.abs(c);
      }
      return best;
    }
    var parts = sort.split(":"), c2 = change(row, variantIndex(parts[0]));
    return c2 === null ? null : (parts[1] === "down" ? -c2 : c2);
  }

  function selected(f) {
    var out = rows.filter(function (r) { return keep(r, f); });
    if (f.sort && f.sort !== "prompt") {
      var keyed = out.map(function (r, i) { return {r: r, i: i, k: sortKey(r, f.sort)}; });
      keyed.sort(function (a, b) {
        if (a.k === null || b.k === null) return (a.k === null) - (b.k === null) || a.i - b.i;
        return b.k - a.k || a.i - b.i;
      });
      out = keyed.map(function (x) { return x.r; });
    }
    return out;
  }

  // ----------------------------------------------------------------- drawing
  function lastTurn(prompt) {
    var text = prompt.replace(/\s*Assistant:\s*$/, "");
    var at = text.lastIndexOf("Human:");
    return (at >= 0 ? text.slice(at + 6) : text).trim();
  }

  function promptCell(row) {
    var cell = el("div", "prompt"), prompt = row.p.prompt;
    var where = el("span", "where", data.sections[row.section].title + " #" + (row.index + 1) +
                   (row.p.category ? " \u00b7 " + row.p.category : ""));
    var turns = (prompt.match(/(^|\n)\s*(Human|Assistant):/g) || []).length;
    if (turns > 1) {
      var details = el("details"), summary = el("summary");
      summary.appendChild(where);
      summary.appendChild(el("span", "turn", lastTurn(prompt)));
      summary.appendChild(el("span", "where", " (" + (turns - 1) + " earlier turns)"));
      details.appendChild(summary);
      details.appendChild(el("div", "dialogue", prompt.trim()));
      cell.appendChild(details);
    } else {
      cell.appendChild(where);
      cell.appendChild(el("span", "turn", lastTurn(prompt)));
    }
    return cell;
  }

  function answerCell(a, k, baseRating) {
    var cell = el("div", "answer" + (a.flip ? " " + a.flip : "")), meta = el("div", "meta");
    cell.dataset.variant = variants[k].name;
    meta.appendChild(el("span", "variant", variants[k].label));
    if (a.rating !== null && a.rating !== undefined) {
      var rating = a.rating.toFixed(2);
      if (k > 0 && baseRating !== null && baseRating !== undefined)
        rating += " (" + (a.rating >= baseRating ? "+" : "\u2212") + Math.abs(a.rating - baseRating).toFixed(2) + ")";
      meta.appendChild(el("span", "rating", rating));
    }
    if (a.pass === true || a.pass === false) meta.appendChild(el("span", "badge " + (a.pass ? "pass" : "fail"),
                                                                 a.pass ? "pass" : "fail"));
    if (a.flip) meta.appendChild(el("span", "badge " + a.flip, a.flip));
    if (a.refused) meta.appendChild(el("span", "badge refused", "refused"));
    if (a.stop) meta.appendChild(el("span", "badge stop", a.stop));
    cell.appendChild(meta);
    cell.appendChild(a.text.trim() ? el("div", "text", a.text) : el("div", "text empty", "(empty answer)"));
    return cell;
  }

  function rowNode(row) {
    var node = el("article", "row"), grid = el("div", "grid");
    node.dataset.section = data.sections[row.section].id;
    node.dataset.index = row.index;
    grid.style.setProperty("--variants", variants.length);
    row.p.answers.forEach(function (a, k) { grid.appendChild(answerCell(a, k, row.p.answers[0].rating)); });
    node.appendChild(promptCell(row));
    node.appendChild(grid);
    return node;
  }

  var shown = [], drawn = 0;
  function drawMore() {
    var frag = document.createDocumentFragment(), end = Math.min(shown.length, drawn + PAGE);
    for (; drawn < end; drawn++) frag.appendChild(rowNode(shown[drawn]));
    list.appendChild(frag);
    count.textContent = shown.length + " of " + rows.length + " prompts" +
      (drawn < shown.length ? " (" + drawn + " drawn; more as you scroll)" : "");
    count.dataset.matches = shown.length;
    count.dataset.drawn = drawn;
    more.hidden = drawn >= shown.length;
    more.textContent = "Show " + Math.min(PAGE, shown.length - drawn) + " more of " + (shown.length - drawn);
  }
  more.addEventListener("click", drawMore);
  if ("IntersectionObserver" in window) {
    new IntersectionObserver(function (entries) {
      if (entries[0].isIntersecting && !more.hidden && !root.hidden) drawMore();
    }, {rootMargin: "600px"}).observe(more);
  }

  // ----------------------------------------------------------------- state, kept in the address (#answers&flip=sft)
  function filters() {
    return {section: sectionSel.value, flip: flipSel.value, refused: refusedSel.value,
            q: search.value.trim().toLowerCase(), sort: sortSel.value};
  }

  function apply(writeAddress) {
    var f = filters();
    shown = selected(f);
    drawn = 0;
    list.textContent = "";
    drawMore();
    if (writeAddress) {
      var params = new URLSearchParams();
      [["section", sectionSel], ["flip", flipSel], ["refused", refusedSel], ["sort", sortSel]].forEach(function (x) {
        if (x[1].value && !(x[0] === "sort" && x[1].value === "prompt")) params.set(x[0], x[1].value);
      });
      if (search.value) params.set("q", search.value);
      var rest = params.toString();
      history.replaceState(null, "", "#answers" + (rest ? "&" + rest : ""));
    }
  }

  function setSelect(select, value) {
    var known = Array.prototype.some.call(select.options, function (o) { return o.value === value; });
    select.value = known ? value : select.options[0].value;
  }

  function fromAddress() {
    var hash = location.hash.slice(1), answers = hash.split("&")[0] === "answers";
    document.getElementById("report").hidden = answers;
    root.hidden = !answers;
    document.getElementById("tab-report").className = answers ? "" : "active";
    document.getElementById("tab-answers").className = answers ? "active" : "";
    if (!answers) return;
    if (hash === "answers") return apply(true);  // back from the report tab: keep the filters set before
    var params = new URLSearchParams(hash.slice("answers".length));
    setSelect(sectionSel, params.get("section") || "");
    setSelect(flipSel, params.get("flip") || "");
    setSelect(refusedSel, params.get("refused") || "");
    setSelect(sortSel, params.get("sort") || "prompt");
    search.value = params.get("q") || "";
    apply(false);
  }

  [sectionSel, flipSel, refusedSel, sortSel].forEach(function (s) {
    s.addEventListener("change", function () { apply(true); });
  });
  var typing = null;
  search.addEventListener("input", function () {
    clearTimeout(typing);
    typing = setTimeout(function () { apply(true); }, 150);
  });
  window.addEventListener("hashchange", fromAddress);
  fromAddress();
  if (!drawn) apply(false);
})();
