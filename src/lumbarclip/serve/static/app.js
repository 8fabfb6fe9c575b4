// LumbarCLIP page: send the chosen files to POST /predict and show what comes back.
// Every value from the server is written with textContent (never as HTML).
"use strict";

const $ = (id) => document.getElementById(id);
let chosen = [];

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

const isAbnormal = (label) => label === 1 || label === "1" || String(label).toLowerCase() === "abnormal";
// label null: the model gives no verdict (input guard, header check, or a study not shaped like
// the evaluated unit); the reason is shown beside it.
const assessed = (label) => label != null;
const labelName = (label) => (!assessed(label) ? "NOT ASSESSED" : isAbnormal(label) ? "ABNORMAL" : "NORMAL");
const kind = (label) => (!assessed(label) ? "unassessed" : isAbnormal(label) ? "abnormal" : "normal");
const pct = (p) => (100 * Number(p)).toFixed(1) + "%";
const num = (x) => (x == null ? "" : Number(x).toFixed(2));

function badge(label) {
  return el("span", { class: "badge " + kind(label), text: labelName(label) });
}

function setFiles(files) {
  chosen = Array.from(files);
  const bytes = chosen.reduce((s, f) => s + f.size, 0);
  $("chosen").textContent = chosen.length
    ? `${chosen.length} file${chosen.length > 1 ? "s" : ""} chosen (${(bytes / 2 ** 20).toFixed(1)} MB): ` +
      chosen.slice(0, 6).map((f) => f.name).join(", ") + (chosen.length > 6 ? ", ..." : "")
    : "No files chosen.";
  $("analyse").disabled = chosen.length === 0;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function renderStudies(studies) {
  const box = $("studies");
  box.replaceChildren();
  for (const s of studies) {
    const sel = Array.isArray(s.selection) ? s.selection.join("\n") : s.selection ? String(s.selection) : "";
    const raw = s.p_abnormal_mean_raw != null ? ` · raw mean ${pct(s.p_abnormal_mean_raw)}` : "";
    box.append(
      el("article", { class: "verdict " + kind(s.label), "data-testid": "study-verdict",
                      "aria-label": `Study ${s.study}: ${labelName(s.label)}` },
        el("span", { class: "what", text: labelName(s.label) }),
        assessed(s.label) ? el("span", { text: `P(abnormal) ${pct(s.p_abnormal)}` }) : null,
        el("span", { class: "meta", text: `${assessed(s.label) ? "threshold " + pct(s.threshold) + " · " : ""}study ${s.study} · ` +
          `${s.n_images} image${s.n_images === 1 ? "" : "s"}, ${s.n_in_distribution ?? s.n_images} in distribution${raw}` }),
        s.reason ? el("p", { class: "reason", "data-testid": "reason", text: s.reason }) : null,
        sel ? el("details", {}, el("summary", { text: "Slices used" }), el("p", { class: "meta", text: sel })) : null,
      ),
    );
  }
  // Finding kinds whose valid AUROC missed the model's gate: named once, never scored.
  const unvalidated = [...new Set(studies.flatMap((s) => s.not_validated || []))];
  if (unvalidated.length) {
    box.append(el("p", { class: "meta", "data-testid": "not-validated",
      text: `Findings not validated for this model (never scored here): ${unvalidated.map((k) => k.replaceAll("_", " ")).join(", ")}` }));
  }
  $("studies-section").hidden = studies.length === 0;
}

function figure(img) {
  const fig = el("figure");
  const sources = [];
  if (img.saliency) sources.push(["overlay", img.saliency, "Saliency overlay"]);
  if (img.preview) sources.push(["slice", img.preview, "Slice"]);
  if (!sources.length) {
    fig.append(el("div", { class: "noimg", text: "no preview" }));
    return fig;
  }
  let shown = 0;
  const picture = el("img", { class: sources[0][0], src: sources[0][1], alt: `${sources[0][2]} of ${img.path}` });
  fig.append(discOverlay(img, picture));
  if (sources.length > 1) {
    const toggle = el("button", { type: "button", class: "ghost", "aria-pressed": "true", text: "Overlay on" });
    toggle.addEventListener("click", () => {
      shown = 1 - shown;
      picture.src = sources[shown][1];
      picture.className = sources[shown][0];
      picture.alt = `${sources[shown][2]} of ${img.path}`;
      toggle.textContent = shown === 0 ? "Overlay on" : "Overlay off";
      toggle.setAttribute("aria-pressed", String(shown === 0));
    });
    fig.append(el("figcaption", {}, toggle));
  }
  return fig;
}

// The discs predict found, drawn over the slice: box, level and (validated) Pfirrmann grade, in
// the pixel frame of the image as read (image_size), whatever size the preview is shown at.
function discOverlay(img, picture) {
  const discs = (img.discs || []).filter((d) => d.box_xyxy);
  if (!discs.length || !img.image_size) return picture;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${img.image_size[0]} ${img.image_size[1]}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("class", "discs");
  svg.setAttribute("data-testid", "disc-boxes");
  svg.setAttribute("role", "img");
  const names = discs.map((d) => `${d.level}${d.pfirrmann != null ? " Pfirrmann " + d.pfirrmann : ""}`);
  svg.setAttribute("aria-label", `discs: ${names.join(", ")}`);
  discs.forEach((d, i) => {
    const [x0, y0, x1, y1] = d.box_xyxy;
    const rect = document.createElementNS(ns, "rect");
    for (const [k, v] of [["x", x0], ["y", y0], ["width", x1 - x0], ["height", y1 - y0]]) rect.setAttribute(k, String(v));
    rect.setAttribute("class", d.validated ? "disc graded" : "disc");
    const label = document.createElementNS(ns, "text");
    label.setAttribute("x", String(x1 + 2));
    label.setAttribute("y", String((y0 + y1) / 2));
    label.textContent = d.pfirrmann != null ? `${d.level} · P${d.pfirrmann}` : d.level;
    const title = document.createElementNS(ns, "title");
    title.textContent = names[i] + (d.reason ? ` (${d.reason})` : "");
    rect.append(title);
    svg.append(rect, label);
  });
  return el("div", { class: "withdiscs" }, picture, svg);
}

function renderImages(images) {
  const box = $("images");
  box.replaceChildren();
  for (const img of images) {
    const tags = [img.plane, img.sequence, img.level, img.study && `study ${img.study}`].filter(Boolean).join(" · ");
    const findings = el("ol");
    for (const f of img.top_findings || []) {
      findings.append(el("li", {}, `${f.finding}${f.level ? " " + f.level : ""} `, el("span", { class: "score", text: num(f.score) })));
    }
    const reports = el("ol", { class: "reports" });
    for (const r of img.nearest_reports || []) {
      reports.append(el("li", { title: r.text }, el("span", { class: "score", text: `${num(r.score)}${r.label != null ? " · " + labelName(r.label).toLowerCase() : ""} · ` }), r.text));
    }
    box.append(
      el("article", { class: "card", "data-testid": "image-card" },
        figure(img),
        el("div", { class: "body" },
          el("div", { class: "name", text: img.path }),
          el("div", { class: "tags", text: tags }),
          assessed(img.label)
            ? el("div", { class: "prob" },
                badge(img.label),
                el("meter", { min: "0", max: "1", value: String(img.p_abnormal), "aria-label": "probability abnormal" }),
                el("span", { text: pct(img.p_abnormal) }))
            : el("div", { class: "prob" }, badge(img.label),
                el("p", { class: "reason", "data-testid": "reason", text: img.reason || "outside what the model was evaluated on" })),
          (img.top_findings || []).length ? el("h3", { text: "Top findings" }) : null,
          (img.top_findings || []).length ? findings : null,
          (img.nearest_reports || []).length ? el("h3", { text: "Nearest reports" }) : null,
          (img.nearest_reports || []).length ? reports : null,
        ),
      ),
    );
  }
  $("images-section").hidden = images.length === 0;
}

function renderSkipped(skipped) {
  const box = $("skipped");
  box.replaceChildren(...skipped.map((s) => el("li", { text: `${s.input}: ${s.reason}` })));
  $("skipped-section").hidden = skipped.length === 0;
}

async function analyse(event) {
  event.preventDefault();
  if (!chosen.length) return;
  showError("");
  const body = new FormData();
  for (const f of chosen) body.append("files", f, f.name);
  if ($("study").value.trim()) body.append("study", $("study").value.trim());
  const query = new URLSearchParams({ saliency: $("saliency").checked ? "1" : "0", previews: "1", top_k: $("top-k").value });
  $("analyse").disabled = true;
  $("status").textContent = `Analysing ${chosen.length} file${chosen.length > 1 ? "s" : ""}…`;
  const started = performance.now();
  try {
    const res = await fetch(`/predict?${query}`, { method: "POST", body });
    const data = await res.json().catch(() => ({ detail: `HTTP ${res.status}` }));
    if (!res.ok) {
      const detail = typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail);
      showError(`Not analysed (HTTP ${res.status}): ${detail}`);
      $("status").textContent = "";
      renderSkipped(data.skipped || []);
      return;
    }
    renderStudies(data.studies || []);
    renderImages(data.images || []);
    renderSkipped(data.skipped || []);
    $("status").textContent = `${data.images.length} image${data.images.length === 1 ? "" : "s"} analysed in ${((performance.now() - started) / 1000).toFixed(1)} s.`;
  } catch (err) {
    showError(`The service could not be reached: ${err}`);
    $("status").textContent = "";
  } finally {
    $("analyse").disabled = chosen.length === 0;
  }
}

async function loadCard() {
  try {
    const [card, health] = await Promise.all([fetch("/model").then((r) => r.json()), fetch("/health").then((r) => r.json())]);
    $("model-name").textContent = [card.name || card.model_name || "model", health.runtime && `runtime ${health.runtime}`].filter(Boolean).join(" · ");
    if (health.max_upload_mb) $("limit").textContent = String(health.max_upload_mb);
    const planes = card.input && card.input.planes;
    if (Array.isArray(planes) && planes.length) $("subtitle").textContent = `Image-only triage of ${planes.join(" and ")} lumbar spine MRI`;
    // the server keeps report text to itself when its bank holds user reports
    if (health.nearest_reports === false) $("top-k-label").textContent = "Top findings";
    const use = card.intended_use;
    if (typeof use === "string" && use) $("intended-use").textContent = `Intended use: ${use.trim().replace(/[.\s]*$/, ".")} Not a medical device: every result needs review by a radiologist.`;
  } catch (err) {
    $("model-name").textContent = "model card unavailable";
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const drop = $("drop");
  $("files").addEventListener("change", (e) => setFiles(e.target.files));
  for (const type of ["dragenter", "dragover"]) drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
  for (const type of ["dragleave", "drop"]) drop.addEventListener(type, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); setFiles(e.dataTransfer.files); });
  $("upload").addEventListener("submit", analyse);
  loadCard();
});
