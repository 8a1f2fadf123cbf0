// k6 load: each virtual user reads random items, one request after another (keep-alive).
import http from "k6/http";
import { Counter } from "k6/metrics";

const base = __ENV.BASE_URL;
const rows = parseInt(__ENV.ROWS, 10);
const failed = new Counter("not_200");
const busy = new Counter("status_503");

export default function () {
  const id = 1 + Math.floor(Math.random() * rows);
  const response = http.get(`${base}/items/${id}`, { timeout: "60s", tags: { name: "item" } });
  if (response.status !== 200) {
    failed.add(1);
  }
  if (response.status === 503) {
    busy.add(1);
  }
}
