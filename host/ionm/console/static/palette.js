// The DSA's colour scale, shared by the console's page and the oversight hub's (ionm.hub.server serves this file):
// dark blue -> blue -> cyan -> green -> yellow -> red, a spectral scale as on the monitors; 256 RGB triples.
const DSA_PALETTE = (() => {
  const stops = [[0, [8, 12, 40]], [0.2, [20, 40, 160]], [0.4, [0, 170, 220]], [0.6, [40, 200, 80]], [0.8, [250, 220, 40]], [1, [230, 30, 30]]];
  const out = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i++) {
    const v = i / 255; let k = 0; while (k < stops.length - 2 && v > stops[k + 1][0]) k++;
    const [a, ca] = stops[k], [b, cb] = stops[k + 1], f = (v - a) / (b - a);
    for (let j = 0; j < 3; j++) out[i * 3 + j] = ca[j] + (cb[j] - ca[j]) * f;
  }
  return out;
})();
