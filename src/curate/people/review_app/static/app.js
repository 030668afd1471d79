// The review app's page: one card at a time, one key per decision. Every string from the data
// goes in through textContent (never innerHTML), so class, group and file names show as text.
"use strict";
(() => {
  const PAGE = 50;
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const $ = (id) => document.getElementById(id);
  const filters = $("filters");
  const classes = [...filters.elements["class"].options].slice(1).map((o) => o.textContent);
  const state = { index: 0, total: 0, pages: new Map(), mine: [], progress: null };

  // The token came in the URL; the server set it as a cookie, so take it out of the address bar.
  if (location.search.includes("token=")) history.replaceState(null, "", location.pathname);

  function query(offset) {
    const params = new URLSearchParams(new FormData(filters));
    params.set("offset", offset);
    params.set("limit", PAGE);
    return "/api/queue?" + params;
  }

  async function page(number) {
    if (!state.pages.has(number)) {
      const fetched = fetch(query(number * PAGE), { credentials: "same-origin" }).then(answer);
      // Progress from a fresh page only: a cached page's is older than the last decision's.
      state.pages.set(number, fetched.then((data) => (showProgress(data.progress), data)));
    }
    const data = await state.pages.get(number);
    state.total = data.total;
    return data.items;
  }

  async function answer(response) {
    const data = await response.json();
    if (!response.ok && response.status !== 409) throw new Error(data.error || response.statusText);
    return Object.assign(data, { status: response.status });
  }

  async function current() {
    if (state.total === 0 && state.pages.size > 0) return null;
    const items = await page(Math.floor(state.index / PAGE));
    return items[state.index % PAGE] || null;
  }

  async function show() {
    const item = await current();
    const where = item && item.band ? ` · audit band ${item.band}` : "";
    $("position").textContent = item ? `flag ${state.index + 1} of ${state.total}${where}` : "nothing here: change the filters";
    for (const id of ["path", "given", "suggested", "quality", "group", "kinds", "decision", "members"]) $(id).replaceChildren();
    $("image").removeAttribute("src");
    if (!item) return;
    $("image").src = "/api/image/" + encodeURIComponent(item.sample_id);
    $("image").alt = item.path;
    $("path").textContent = item.path;
    $("given").textContent = item.given;
    $("suggested").textContent = item.probability === null ? item.suggested : `${item.suggested} (p = ${item.probability.toFixed(3)})`;
    $("quality").textContent = item.quality === null ? "n/a" : item.quality.toPrecision(3);
    $("group").textContent = item.group;
    for (const kind of item.kinds) $("kinds").append(tag("span", "kind", kind === "duplicate" ? "near-duplicate" : kind));
    if (item.duplicates.length) $("members").append(tag("p", "", "the other members of its near-duplicate set:"));
    for (const sid of item.duplicates) {
      const img = document.createElement("img");
      img.src = "/api/image/" + encodeURIComponent(sid);
      img.alt = img.title = "near-duplicate " + sid;
      $("members").append(img);
    }
    $("decision").append(decisionTag(item.decision));
    page(Math.floor(state.index / PAGE) + 1).catch(() => {}); // the next page, before it is needed
  }

  function tag(name, cls, text) {
    const el = document.createElement(name);
    el.className = cls;
    el.textContent = text;
    return el;
  }

  function decisionTag(d) {
    if (!d) return tag("span", "", "undecided");
    const what = d.decision === "relabel" ? `relabel to ${d.label}` : d.decision;
    return tag("span", "decided " + d.decision, `${what} · ${d.reviewer} · ledger line ${d.line}`);
  }

  function showProgress(p) {
    if (!p) return;
    state.progress = p;
    if (p.audit) return showAudit(p);
    const precision = p.reviewed_label_flags ? `${Math.round((100 * p.confirmed) / p.reviewed_label_flags)}%` : "n/a";
    $("progress").textContent = `decided ${p.decided} / ${p.total} flags · review precision so far ${precision} (${p.confirmed} of ${p.reviewed_label_flags} label flags confirmed)`;
  }

  // The audit's estimate, as clean will compute it: it comes with every answer, never asked for apart.
  const percent = (share) => `${Math.round(100 * share)}%`;
  const interval = (e) => `${Math.round(100 * e.low)}–${percent(e.high)}`;

  function showAudit(p) {
    const a = p.audit;
    $("progress").textContent = `decided ${p.decided} / ${p.total} sampled flags`;
    const stale = a.stale ? ` · ${a.stale} of ${a.lines} audit lines stale (set aside)` : "";
    $("audit-overall").textContent = a.counted
      ? `audited precision ${percent(a.precision)} (95% interval ${interval(a)}) over ${a.counted} counted flags${stale}`
      : `audited precision: no flag counted yet${stale}`;
    $("audit-bands").replaceChildren(...a.bands.map((band) => tag("li", "", bandText(band))));
  }

  function bandText(b) {
    if (!b.flags) return `band ${b.band}: no flags`;
    const quality = `quality ${b.quality_low.toFixed(3)}–${b.quality_high.toFixed(3)}`;
    const share = b.counted ? `, ${percent(b.precision)} (${interval(b)})` : "";
    const waiting = b.waiting ? `, ${b.waiting} waiting for an earlier flag` : "";
    return `band ${b.band} (${quality}): ${b.counted} of ${b.sampled} counted, ${b.confirmed} confirmed${share}${waiting}`;
  }

  function say(text, ok) {
    $("message").textContent = text;
    $("message").className = ok ? "ok" : "";
  }

  async function post(path, body) {
    const response = await fetch(path, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body),
    });
    return answer(response);
  }

  async function decide(decision, label) {
    const item = await current();
    if (!item) return;
    try {
      const data = await post("/api/decide", { sample_id: item.sample_id, decision, label: label || "", note: $("note").value });
      showProgress(data.progress);
      if (data.status === 409) {
        item.decision = data.first;
        say(data.error);
        return show();
      }
      item.decision = data.decision;
      state.mine.push({ index: state.index, item });
      $("note").value = "";
      say(`${decision}${label ? " to " + label : ""}: written to ledger line ${data.decision.line}`, true);
      await move(1);
    } catch (error) {
      say(error.message);
    }
  }

  // u: take back the decision on this card; on an undecided card, your last decision (and go there).
  async function undo() {
    const item = await current();
    let target = item && item.decision ? { index: state.index, item } : null;
    while (!target && state.mine.length) {
      const last = state.mine.pop();
      if (last.item.decision) target = last;
    }
    if (!target) return say("nothing to undo here");
    try {
      const data = await post("/api/undo", { sample_id: target.item.sample_id });
      showProgress(data.progress);
      if (data.status === 409) return say(data.error);
      target.item.decision = null;
      state.index = target.index;
      say("undone: an undo line appended", true);
      await show();
    } catch (error) {
      say(error.message);
    }
  }

  async function move(step) {
    state.index = Math.min(Math.max(state.index + step, 0), Math.max(state.total - 1, 0));
    await show();
  }

  // --- the class picker: type-ahead over the class names ---
  let choices = [];
  let active = 0;
  function openPicker() {
    $("picker").hidden = false;
    $("picker-input").value = "";
    filterPicker();
    $("picker-input").focus();
  }
  function filterPicker() {
    const typed = $("picker-input").value.toLowerCase();
    const starts = classes.filter((c) => c.toLowerCase().startsWith(typed));
    choices = starts.concat(classes.filter((c) => !starts.includes(c) && c.toLowerCase().includes(typed)));
    active = 0;
    renderPicker();
  }
  function renderPicker() {
    $("picker-list").replaceChildren(...choices.map((c, i) => tag("li", i === active ? "active" : "", c)));
  }
  function closePicker() {
    $("picker").hidden = true;
    $("picker-input").blur();
  }
  $("picker-input").addEventListener("input", filterPicker);
  $("picker-input").addEventListener("keydown", (event) => {
    event.stopPropagation();
    if (event.key === "Escape") closePicker();
    else if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      active = (active + (event.key === "ArrowDown" ? 1 : choices.length - 1)) % Math.max(choices.length, 1);
      renderPicker();
      event.preventDefault();
    } else if (event.key === "Enter" && choices.length) {
      const label = choices[active];
      closePicker();
      pending = pending.then(() => decide("relabel", label));
    }
  });

  $("note").addEventListener("keydown", (event) => {
    event.stopPropagation();
    if (event.key === "Enter" || event.key === "Escape") $("note").blur();
  });
  filters.addEventListener("change", () => {
    state.pages.clear();
    state.index = 0;
    show().catch((error) => say(error.message));
  });

  const KEYS = {
    k: () => decide("keep"),
    d: () => decide("drop"),
    r: openPicker,
    u: undo,
    j: () => move(1),
    ArrowRight: () => move(1),
    h: () => move(-1),
    ArrowLeft: () => move(-1),
    n: () => $("note").focus(),
    "?": () => ($("help").hidden = !$("help").hidden),
    Escape: () => ($("help").hidden = true),
  };
  // Keys run one after another: a fast typist's second key acts on the card the first one left.
  let pending = Promise.resolve();
  document.addEventListener("keydown", (event) => {
    if (event.target.tagName === "SELECT" || event.ctrlKey || event.metaKey || event.altKey) return;
    const action = KEYS[event.key];
    if (!action) return;
    event.preventDefault();
    pending = pending.then(action).catch((error) => say(error.message));
  });

  // "first-card": when the first card is on screen, its image decoded (what the benchmark reads).
  show()
    .then(() => $("image").decode())
    .then(() => performance.mark("first-card"))
    .catch((error) => say(error.message));
})();
