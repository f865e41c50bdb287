// Remixer's mask painter: plain script, no build step. The mask is a canvas at the source
// image's own size; what is painted on it (any opaque pixel) becomes white in the mask sent.
"use strict";

(function () {
  const PAINT = "#ff3d6e";
  const base = location.pathname.replace(/\/+$/, "");
  const nonce = document.querySelector('meta[name="paint-nonce"]').content;
  const $ = (id) => document.getElementById(id);
  const stage = $("stage"), layer = $("layer"), photo = $("photo"), mask = $("mask");
  const ctx = mask.getContext("2d", { willReadFrequently: true });
  const message = $("message");

  const state = {
    tool: "brush", pan: false, size: Number($("size").value),
    ops: [], undone: [], stroke: null, initial: null,
    scale: 1, x: 0, y: 0, pointers: new Map(), pinch: null, drag: null,
  };

  function say(text, isError, link) {
    message.textContent = text;
    message.className = "message" + (isError ? " error" : "");
    if (link) {
      message.append(" ");
      const a = document.createElement("a");
      a.href = link.href;
      a.textContent = link.text;
      a.rel = "noreferrer";
      message.append(a);
    }
  }

  // --- drawing ----------------------------------------------------------------------------

  function drawSegment(op, from, to) {
    ctx.save();
    ctx.globalCompositeOperation = op.tool === "eraser" ? "destination-out" : "source-over";
    ctx.strokeStyle = PAINT;
    ctx.fillStyle = PAINT;
    ctx.lineWidth = op.width;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.beginPath();
    if (from === to) {
      ctx.arc(to[0], to[1], op.width / 2, 0, Math.PI * 2);
      ctx.fill();
    } else {
      ctx.moveTo(from[0], from[1]);
      ctx.lineTo(to[0], to[1]);
      ctx.stroke();
    }
    ctx.restore();
  }

  function apply(op) {
    if (op.kind === "stroke") {
      op.points.forEach((p, i) => drawSegment(op, i ? op.points[i - 1] : p, p));
    } else if (op.kind === "clear") {
      ctx.clearRect(0, 0, mask.width, mask.height);
    } else if (op.kind === "invert") {
      ctx.save();
      ctx.globalCompositeOperation = "xor";
      ctx.fillStyle = PAINT;
      ctx.fillRect(0, 0, mask.width, mask.height);
      ctx.restore();
    }
  }

  function redraw() {
    ctx.clearRect(0, 0, mask.width, mask.height);
    if (state.initial) ctx.drawImage(state.initial, 0, 0);
    state.ops.forEach(apply);
    updateButtons();
  }

  function push(op) {
    state.ops.push(op);
    state.undone = [];
    updateButtons();
  }

  function updateButtons() {
    $("undo").disabled = state.ops.length === 0;
    $("redo").disabled = state.undone.length === 0;
  }

  // --- view: fit, zoom, pan ---------------------------------------------------------------

  function place() {
    layer.style.transform = `translate(${state.x}px, ${state.y}px) scale(${state.scale})`;
  }

  function fit() {
    const w = stage.clientWidth, h = stage.clientHeight;
    state.scale = Math.min(w / mask.width, h / mask.height);
    state.x = (w - mask.width * state.scale) / 2;
    state.y = (h - mask.height * state.scale) / 2;
    place();
  }

  function zoomAt(factor, cx, cy) {
    const scale = Math.min(Math.max(state.scale * factor, 0.05), 40);
    state.x = cx - (cx - state.x) * (scale / state.scale);
    state.y = cy - (cy - state.y) * (scale / state.scale);
    state.scale = scale;
    place();
  }

  function stagePoint(e) {
    const r = stage.getBoundingClientRect();
    return [e.clientX - r.left, e.clientY - r.top];
  }

  function imagePoint(e) {
    const r = mask.getBoundingClientRect();
    return [(e.clientX - r.left) * (mask.width / r.width),
            (e.clientY - r.top) * (mask.height / r.height)];
  }

  function pinchInfo() {
    const [a, b] = [...state.pointers.values()];
    return { mid: [(a[0] + b[0]) / 2, (a[1] + b[1]) / 2],
             dist: Math.hypot(a[0] - b[0], a[1] - b[1]) || 1 };
  }

  // --- pointer input: mouse, pen and touch alike ------------------------------------------

  mask.addEventListener("pointerdown", (e) => {
    if (e.button !== undefined && e.button > 0 && e.pointerType === "mouse") return;
    e.preventDefault();
    mask.setPointerCapture(e.pointerId);
    state.pointers.set(e.pointerId, stagePoint(e));
    if (state.pointers.size === 2) {
      // Two fingers: zoom and pan; a stroke just begun by the first finger is dropped.
      if (state.stroke) {
        state.ops.pop();
        state.stroke = null;
        redraw();
      }
      state.pinch = pinchInfo();
      return;
    }
    if (state.pointers.size > 2) return;
    if (state.pan) {
      state.drag = stagePoint(e);
      return;
    }
    const width = state.size * (mask.width / mask.getBoundingClientRect().width);
    const p = imagePoint(e);
    state.stroke = { kind: "stroke", tool: state.tool, width, points: [p] };
    push(state.stroke);
    drawSegment(state.stroke, p, p);
  });

  mask.addEventListener("pointermove", (e) => {
    if (!state.pointers.has(e.pointerId)) return;
    e.preventDefault();
    state.pointers.set(e.pointerId, stagePoint(e));
    if (state.pinch && state.pointers.size === 2) {
      const now = pinchInfo();
      zoomAt(now.dist / state.pinch.dist, now.mid[0], now.mid[1]);
      state.x += now.mid[0] - state.pinch.mid[0];
      state.y += now.mid[1] - state.pinch.mid[1];
      place();
      state.pinch = now;
      return;
    }
    if (state.drag) {
      const p = stagePoint(e);
      state.x += p[0] - state.drag[0];
      state.y += p[1] - state.drag[1];
      state.drag = p;
      place();
      return;
    }
    if (state.stroke) {
      const points = state.stroke.points;
      const p = imagePoint(e);
      drawSegment(state.stroke, points[points.length - 1], p);
      points.push(p);
    }
  });

  function release(e) {
    if (!state.pointers.has(e.pointerId)) return;
    state.pointers.delete(e.pointerId);
    if (state.pointers.size < 2) state.pinch = null;
    if (state.pointers.size === 0) {
      state.stroke = null;
      state.drag = null;
    }
  }
  mask.addEventListener("pointerup", release);
  mask.addEventListener("pointercancel", release);
  mask.addEventListener("contextmenu", (e) => e.preventDefault());

  stage.addEventListener("wheel", (e) => {
    e.preventDefault();
    const [cx, cy] = stagePoint(e);
    zoomAt(Math.exp(-e.deltaY * 0.0015), cx, cy);
  }, { passive: false });

  // --- tools ------------------------------------------------------------------------------

  function choose(tool) {
    state.tool = tool;
    state.pan = false;
    $("brush").setAttribute("aria-pressed", String(tool === "brush"));
    $("eraser").setAttribute("aria-pressed", String(tool === "eraser"));
    $("pan").setAttribute("aria-pressed", "false");
    stage.classList.remove("panning");
  }
  $("brush").addEventListener("click", () => choose("brush"));
  $("eraser").addEventListener("click", () => choose("eraser"));
  $("pan").addEventListener("click", () => {
    state.pan = !state.pan;
    $("pan").setAttribute("aria-pressed", String(state.pan));
    stage.classList.toggle("panning", state.pan);
  });
  $("size").addEventListener("input", () => { state.size = Number($("size").value); });
  $("undo").addEventListener("click", () => {
    if (state.ops.length) state.undone.push(state.ops.pop());
    redraw();
  });
  $("redo").addEventListener("click", () => {
    if (state.undone.length) state.ops.push(state.undone.pop());
    redraw();
  });
  $("clear").addEventListener("click", () => { push({ kind: "clear" }); apply({ kind: "clear" }); });
  $("invert").addEventListener("click", () => { push({ kind: "invert" }); apply({ kind: "invert" }); });
  $("zoom-in").addEventListener("click", () => zoomAt(1.25, stage.clientWidth / 2, stage.clientHeight / 2));
  $("zoom-out").addEventListener("click", () => zoomAt(0.8, stage.clientWidth / 2, stage.clientHeight / 2));
  $("fit").addEventListener("click", fit);
  window.addEventListener("resize", fit);

  // --- the mask sent: white where painted, black elsewhere, at the image's size -----------

  function maskBlob() {
    const w = mask.width, h = mask.height;
    const painted = ctx.getImageData(0, 0, w, h).data;
    const out = document.createElement("canvas");
    out.width = w;
    out.height = h;
    const octx = out.getContext("2d");
    const image = octx.createImageData(w, h);
    let count = 0;
    for (let i = 0; i < w * h; i++) {
      const on = painted[i * 4 + 3] >= 128;
      const v = on ? 255 : 0;
      count += on ? 1 : 0;
      image.data[i * 4] = v;
      image.data[i * 4 + 1] = v;
      image.data[i * 4 + 2] = v;
      image.data[i * 4 + 3] = 255;
    }
    if (count === 0) return Promise.reject(new Error("Nothing is painted: paint the region to repaint first."));
    if (count === w * h) {
      return Promise.reject(new Error("The painted region covers the whole image: leave some of it unpainted (to change everything, use /img2img)."));
    }
    octx.putImageData(image, 0, 0);
    return new Promise((resolve, reject) => out.toBlob(
      (blob) => (blob ? resolve(blob) : reject(new Error("The mask could not be made."))), "image/png"));
  }

  $("form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const prompt = $("prompt").value.trim();
    if (!prompt) {
      say("Write a prompt: what the painted region should show.", true);
      return;
    }
    let blob;
    try {
      blob = await maskBlob();
    } catch (err) {
      say(err.message, true);
      return;
    }
    const body = new FormData();
    body.append("prompt", prompt);
    body.append("negative_prompt", $("negative_prompt").value);
    body.append("strength", $("strength").value);
    body.append("samples", $("samples").value);
    body.append("mask", blob, "mask.png");
    $("generate").disabled = true;
    say("Sending…", false);
    let answer = {};
    let response;
    try {
      response = await fetch(base, { method: "POST", body, credentials: "same-origin",
                                     headers: { "X-Paint-Nonce": nonce } });
      answer = await response.json();
    } catch (err) {
      say("The painter could not reach Remixer; try again.", true);
      $("generate").disabled = false;
      return;
    }
    if (!response.ok) {
      say(answer.error || `Refused (HTTP ${response.status}).`, true);
      $("generate").disabled = response.status === 410;
      return;
    }
    const place = answer.position ? ` It is number ${answer.position} in line.`
                                  : " It is being made now.";
    say(`Queued as job ${answer.job}.${place} The result will be posted in the channel.`, false,
        { href: answer.channel_url, text: "Back to the channel" });
    document.body.classList.add("queued");
  });

  // --- start: the defaults, the image, and the mask to start from -------------------------

  function loadImage(url) {
    return fetch(url, { credentials: "same-origin" }).then((r) => {
      if (!r.ok) return r.json().then((a) => { throw new Error(a.error || "The image could not be loaded."); });
      return r.blob();
    }).then((blob) => new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = () => reject(new Error("The image could not be shown."));
      img.src = URL.createObjectURL(blob);
    }));
  }

  async function start() {
    try {
      const info = await fetch(base + "/info", { credentials: "same-origin" }).then((r) => r.json());
      if (info.error) throw new Error(info.error);
      $("prompt").value = info.prompt || "";
      $("negative_prompt").value = info.negative_prompt || "";
      if (info.strength !== null && info.strength !== undefined) $("strength").value = info.strength;
      $("samples").value = info.samples || 1;
      const img = await loadImage(base + "/image");
      photo.src = img.src;
      mask.width = img.naturalWidth;
      mask.height = img.naturalHeight;
      layer.style.width = img.naturalWidth + "px";
      layer.style.height = img.naturalHeight + "px";
      if (info.has_mask) {
        const last = await loadImage(base + "/mask");
        const start = document.createElement("canvas");
        start.width = mask.width;
        start.height = mask.height;
        const sctx = start.getContext("2d");
        sctx.drawImage(last, 0, 0, mask.width, mask.height);
        const px = sctx.getImageData(0, 0, mask.width, mask.height);
        for (let i = 0; i < px.data.length; i += 4) {
          const on = px.data[i] >= 128;
          px.data[i] = 255; px.data[i + 1] = 61; px.data[i + 2] = 110;
          px.data[i + 3] = on ? 255 : 0;
        }
        sctx.putImageData(px, 0, 0);
        state.initial = start;
      }
      redraw();
      fit();
      $("loading").remove();
      document.body.classList.add("ready");
    } catch (err) {
      $("loading").textContent = err.message;
      say(err.message, true);
      $("generate").disabled = true;
    }
  }

  start();
})();
