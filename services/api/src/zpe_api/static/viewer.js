/* A small structure viewer on a <canvas>: atoms coloured and sized by element, bonds from
   covalent radii, the cell outline; drag to rotate, wheel or pinch to zoom, click an atom to
   pick it; a normal mode can be animated. No external scripts (the pages' CSP forbids them). */
"use strict";

(function () {
  // Jmol colours and covalent radii (Å, Cordero et al. 2008) of the elements met in practice;
  // anything else is grey with 1.5 Å.
  const ELEMENTS = {
    H: ["#ffffff", 0.31], He: ["#d9ffff", 0.28], Li: ["#cc80ff", 1.28], Be: ["#c2ff00", 0.96],
    B: ["#ffb5b5", 0.84], C: ["#909090", 0.76], N: ["#3050f8", 0.71], O: ["#ff0d0d", 0.66],
    F: ["#90e050", 0.57], Ne: ["#b3e3f5", 0.58], Na: ["#ab5cf2", 1.66], Mg: ["#8aff00", 1.41],
    Al: ["#bfa6a6", 1.21], Si: ["#f0c8a0", 1.11], P: ["#ff8000", 1.07], S: ["#ffff30", 1.05],
    Cl: ["#1ff01f", 1.02], Ar: ["#80d1e3", 1.06], K: ["#8f40d4", 2.03], Ca: ["#3dff00", 1.76],
    Sc: ["#e6e6e6", 1.7], Ti: ["#bfc2c7", 1.6], V: ["#a6a6ab", 1.53], Cr: ["#8a99c7", 1.39],
    Mn: ["#9c7ac7", 1.39], Fe: ["#e06633", 1.32], Co: ["#f090a0", 1.26], Ni: ["#50d050", 1.24],
    Cu: ["#c88033", 1.32], Zn: ["#7d80b0", 1.22], Ga: ["#c28f8f", 1.22], Ge: ["#668f8f", 1.2],
    As: ["#bd80e3", 1.19], Se: ["#ffa100", 1.2], Br: ["#a62929", 1.2], Kr: ["#5cb8d1", 1.16],
    Rb: ["#702eb0", 2.2], Sr: ["#00ff00", 1.95], Y: ["#94ffff", 1.9], Zr: ["#94e0e0", 1.75],
    Nb: ["#73c2c9", 1.64], Mo: ["#54b5b5", 1.54], Ru: ["#248f8f", 1.46], Rh: ["#0a7d8c", 1.42],
    Pd: ["#006985", 1.39], Ag: ["#c0c0c0", 1.45], Cd: ["#ffd98f", 1.44], In: ["#a67573", 1.42],
    Sn: ["#668080", 1.39], Sb: ["#9e63b5", 1.39], Te: ["#d47a00", 1.38], I: ["#940094", 1.39],
    Xe: ["#429eb0", 1.4], Cs: ["#57178f", 2.44], Ba: ["#00c900", 2.15], La: ["#70d4ff", 2.07],
    Ce: ["#ffffc7", 2.04], Hf: ["#4dc2ff", 1.75], Ta: ["#4da6ff", 1.7], W: ["#2194d6", 1.62],
    Re: ["#267dab", 1.51], Os: ["#266696", 1.44], Ir: ["#175487", 1.41], Pt: ["#d0d0e0", 1.36],
    Au: ["#ffd123", 1.36], Hg: ["#b8b8d0", 1.32], Tl: ["#a6544d", 1.45], Pb: ["#575961", 1.46],
    Bi: ["#9e4fb5", 1.48],
  };
  const UNKNOWN = ["#b0b0b0", 1.5];
  const BOND_TOLERANCE = 1.2; // bonded when closer than 1.2 x the sum of covalent radii
  const OVERLAP = 0.5; // Å: two atoms this close are almost certainly a mistake
  const PICK_SLOP = 5; // px a click may move and still count as a click

  function element(symbol) {
    return ELEMENTS[symbol] || UNKNOWN;
  }

  function multiply(a, b) {
    const out = [[0, 0, 0], [0, 0, 0], [0, 0, 0]];
    for (let i = 0; i < 3; i++) {
      for (let j = 0; j < 3; j++) {
        out[i][j] = a[i][0] * b[0][j] + a[i][1] * b[1][j] + a[i][2] * b[2][j];
      }
    }
    return out;
  }

  function rotation(axis, angle) {
    const c = Math.cos(angle);
    const s = Math.sin(angle);
    if (axis === "x") return [[1, 0, 0], [0, c, -s], [0, s, c]];
    return [[c, 0, s], [0, 1, 0], [-s, 0, c]];
  }

  function distance(a, b) {
    return Math.hypot(a[0] - b[0], a[1] - b[1], a[2] - b[2]);
  }

  class StructureViewer {
    /** @param {HTMLCanvasElement} canvas  @param {{onPick?: (index: number) => void}} options */
    constructor(canvas, options = {}) {
      this.canvas = canvas;
      this.ctx = canvas.getContext("2d");
      this.onPick = options.onPick || null;
      this.atoms = [];
      this.cell = null;
      this.bonds = [];
      this.mobile = new Set();
      this.overlapping = new Set();
      // Look slightly from above and aside, so a flat molecule or slab is not seen edge-on.
      this.rot = multiply(rotation("x", -0.45), rotation("y", 0.35));
      this.zoom = 1;
      this.offsets = null; // per-atom displacement while a mode is animated
      this.frame = null;
      this.pointers = new Map();
      this.drag = null;
      canvas.zpeViewer = this; // lets tests and the page find the viewer of a canvas
      this._wire();
      if (window.ResizeObserver) new ResizeObserver(() => this.draw()).observe(canvas);
    }

    /** Show a structure: atoms [{element, position, fixed}], cell (rows, Å) or null. */
    setStructure(atoms, cell) {
      this.stopAnimation();
      this.atoms = atoms.map((a) => ({ element: a.element, position: a.position, fixed: !!a.fixed }));
      this.cell = cell;
      this.bonds = [];
      this.overlapping = new Set();
      const n = this.atoms.length;
      for (let i = 0; i < n; i++) {
        for (let j = i + 1; j < n; j++) {
          const a = this.atoms[i];
          const b = this.atoms[j];
          const d = distance(a.position, b.position);
          if (d < OVERLAP) {
            this.overlapping.add(i);
            this.overlapping.add(j);
          } else if (d < BOND_TOLERANCE * (element(a.element)[1] + element(b.element)[1])) {
            this.bonds.push([i, j]);
          }
        }
      }
      this._fit();
      this.draw();
    }

    /** Which atoms are drawn as mobile (a ring around them). */
    setMobile(indices) {
      this.mobile = new Set(indices);
      this.draw();
    }

    /** Atoms closer than 0.5 Å to another (drawn with a red ring). */
    overlaps() {
      return Array.from(this.overlapping).sort((a, b) => a - b);
    }

    /** Animate a normal mode: ``vectors`` is one [dx, dy, dz] per atom, scaled to ``amplitude`` Å. */
    animate(vectors, amplitude = 0.35) {
      this.stopAnimation();
      const largest = Math.max(1e-12, ...vectors.map((v) => Math.hypot(v[0], v[1], v[2])));
      const scale = amplitude / largest;
      const start = performance.now();
      const step = (t) => {
        const phase = Math.sin(((t - start) / 1000) * 2 * Math.PI * 0.8);
        this.offsets = vectors.map((v) => [v[0] * scale * phase, v[1] * scale * phase, v[2] * scale * phase]);
        this.draw();
        this.frame = requestAnimationFrame(step);
      };
      this.frame = requestAnimationFrame(step);
    }

    stopAnimation() {
      if (this.frame !== null) cancelAnimationFrame(this.frame);
      this.frame = null;
      this.offsets = null;
      this.draw();
    }

    get animating() {
      return this.frame !== null;
    }

    /** Where atom ``index`` is drawn, in CSS pixels from the canvas's top left. */
    project(index) {
      const p = this._screen(this._position(index));
      return { x: p[0], y: p[1], radius: this._radius(index) };
    }

    // ------------------------------------------------------------ geometry

    _position(i) {
      const p = this.atoms[i].position;
      const o = this.offsets ? this.offsets[i] : null;
      return o ? [p[0] + o[0], p[1] + o[1], p[2] + o[2]] : p;
    }

    _cellCorners() {
      if (!this.cell) return [];
      const [a, b, c] = this.cell;
      const corners = [];
      for (const i of [0, 1]) {
        for (const j of [0, 1]) {
          for (const k of [0, 1]) {
            corners.push([0, 1, 2].map((d) => i * a[d] + j * b[d] + k * c[d]));
          }
        }
      }
      return corners;
    }

    _fit() {
      // Centre on the atoms; scale so the atoms (not a large vacuum box) fill the view.
      const pts = this.atoms.map((a) => a.position);
      if (!pts.length) {
        this.center = [0, 0, 0];
        this.extent = 1;
        return;
      }
      this.center = [0, 1, 2].map((d) => pts.reduce((s, p) => s + p[d], 0) / pts.length);
      const far = Math.max(...pts.map((p) => distance(p, this.center)));
      this.extent = Math.max(far + 1.5, 2.5);
      this.zoom = 1;
    }

    _size() {
      const rect = this.canvas.getBoundingClientRect();
      return { w: Math.max(rect.width, 1), h: Math.max(rect.height, 1) };
    }

    _scale() {
      const { w, h } = this._size();
      return (this.zoom * Math.min(w, h)) / (2 * this.extent);
    }

    /** [x, y, depth] in CSS pixels; larger depth is nearer the viewer. */
    _screen(p) {
      const { w, h } = this._size();
      const q = [p[0] - this.center[0], p[1] - this.center[1], p[2] - this.center[2]];
      const r = this.rot;
      const x = r[0][0] * q[0] + r[0][1] * q[1] + r[0][2] * q[2];
      const y = r[1][0] * q[0] + r[1][1] * q[1] + r[1][2] * q[2];
      const z = r[2][0] * q[0] + r[2][1] * q[1] + r[2][2] * q[2];
      const s = this._scale();
      return [w / 2 + x * s, h / 2 - y * s, z];
    }

    _radius(i) {
      return Math.max(3, 0.45 * element(this.atoms[i].element)[1] * this._scale());
    }

    // ------------------------------------------------------------ drawing

    draw() {
      const { w, h } = this._size();
      const dpr = window.devicePixelRatio || 1;
      if (this.canvas.width !== Math.round(w * dpr) || this.canvas.height !== Math.round(h * dpr)) {
        this.canvas.width = Math.round(w * dpr);
        this.canvas.height = Math.round(h * dpr);
      }
      const ctx = this.ctx;
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.clearRect(0, 0, w, h);
      ctx.fillStyle = "#f7f8fa";
      ctx.fillRect(0, 0, w, h);
      this._drawCell(ctx);
      const screen = this.atoms.map((_, i) => this._screen(this._position(i)));
      ctx.lineCap = "round";
      for (const [i, j] of this.bonds) {
        ctx.strokeStyle = "#6b7280";
        ctx.lineWidth = Math.max(1.5, 0.12 * this._scale());
        ctx.beginPath();
        ctx.moveTo(screen[i][0], screen[i][1]);
        ctx.lineTo(screen[j][0], screen[j][1]);
        ctx.stroke();
      }
      const order = screen.map((p, i) => [p[2], i]).sort((a, b) => a[0] - b[0]);
      for (const [, i] of order) this._drawAtom(ctx, i, screen[i]);
    }

    _drawCell(ctx) {
      const corners = this._cellCorners().map((p) => this._screen(p));
      if (!corners.length) return;
      ctx.save();
      ctx.strokeStyle = "#9aa3af";
      ctx.lineWidth = 1;
      ctx.setLineDash([4, 4]);
      ctx.beginPath();
      for (let a = 0; a < 8; a++) {
        for (const bit of [1, 2, 4]) {
          const b = a | bit;
          if (b === a) continue;
          ctx.moveTo(corners[a][0], corners[a][1]);
          ctx.lineTo(corners[b][0], corners[b][1]);
        }
      }
      ctx.stroke();
      ctx.restore();
    }

    _drawAtom(ctx, i, p) {
      const atom = this.atoms[i];
      const r = this._radius(i);
      const [color] = element(atom.element);
      ctx.save();
      ctx.globalAlpha = atom.fixed ? 0.45 : 1;
      const shade = ctx.createRadialGradient(p[0] - r / 3, p[1] - r / 3, r / 6, p[0], p[1], r);
      shade.addColorStop(0, "#ffffff");
      shade.addColorStop(0.35, color);
      shade.addColorStop(1, "#30343b");
      ctx.fillStyle = shade;
      ctx.beginPath();
      ctx.arc(p[0], p[1], r, 0, 2 * Math.PI);
      ctx.fill();
      ctx.globalAlpha = 1;
      if (atom.fixed) {
        ctx.setLineDash([3, 3]);
        ctx.strokeStyle = "#4b5563";
        ctx.lineWidth = 1;
        ctx.stroke();
        ctx.setLineDash([]);
      } else if (this.mobile.has(i)) {
        ctx.strokeStyle = "#1d4ed8";
        ctx.lineWidth = 3;
        ctx.beginPath();
        ctx.arc(p[0], p[1], r + 2.5, 0, 2 * Math.PI);
        ctx.stroke();
      }
      if (this.overlapping.has(i)) {
        ctx.strokeStyle = "#dc2626";
        ctx.lineWidth = 2;
        ctx.beginPath();
        ctx.arc(p[0], p[1], r + 6, 0, 2 * Math.PI);
        ctx.stroke();
      }
      ctx.restore();
    }

    // ------------------------------------------------------------ interaction

    _pick(x, y) {
      let best = null;
      for (let i = 0; i < this.atoms.length; i++) {
        const p = this._screen(this._position(i));
        const r = this._radius(i);
        if ((p[0] - x) ** 2 + (p[1] - y) ** 2 <= r * r && (best === null || p[2] > best[0])) {
          best = [p[2], i];
        }
      }
      return best === null ? null : best[1];
    }

    _wire() {
      const c = this.canvas;
      c.style.touchAction = "none";
      c.addEventListener("pointerdown", (e) => {
        c.setPointerCapture(e.pointerId);
        this.pointers.set(e.pointerId, [e.clientX, e.clientY]);
        this.drag = { x: e.clientX, y: e.clientY, moved: 0, pinch: null };
      });
      c.addEventListener("pointermove", (e) => {
        if (!this.pointers.has(e.pointerId) || !this.drag) return;
        const [px, py] = this.pointers.get(e.pointerId);
        this.pointers.set(e.pointerId, [e.clientX, e.clientY]);
        if (this.pointers.size === 2) {
          const [a, b] = Array.from(this.pointers.values());
          const span = Math.hypot(a[0] - b[0], a[1] - b[1]);
          if (this.drag.pinch) this._zoomBy(span / this.drag.pinch);
          this.drag.pinch = span;
          this.drag.moved += PICK_SLOP + 1;
          return;
        }
        const dx = e.clientX - px;
        const dy = e.clientY - py;
        this.drag.moved += Math.abs(dx) + Math.abs(dy);
        this.rot = multiply(multiply(rotation("x", dy * 0.01), rotation("y", dx * 0.01)), this.rot);
        this.draw();
      });
      const end = (e) => {
        if (!this.pointers.has(e.pointerId)) return;
        this.pointers.delete(e.pointerId);
        if (this.drag && this.drag.moved <= PICK_SLOP && e.type === "pointerup" && this.onPick) {
          const rect = c.getBoundingClientRect();
          const index = this._pick(e.clientX - rect.left, e.clientY - rect.top);
          if (index !== null) this.onPick(index);
        }
        if (this.pointers.size === 0) this.drag = null;
      };
      c.addEventListener("pointerup", end);
      c.addEventListener("pointercancel", end);
      c.addEventListener(
        "wheel",
        (e) => {
          e.preventDefault();
          this._zoomBy(Math.exp(-e.deltaY * 0.0015));
        },
        { passive: false }
      );
    }

    _zoomBy(factor) {
      this.zoom = Math.min(20, Math.max(0.2, this.zoom * factor));
      this.draw();
    }
  }

  window.ZPE = window.ZPE || {};
  window.ZPE.StructureViewer = StructureViewer;
})();
