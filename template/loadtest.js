// A load test of this service, with k6 (a dev dependency):
//
//     uv run k6 run loadtest.js                                    # 50 clients for 1 minute
//     BASE_URL=https://staging.example.com VUS=200 DURATION=5m uv run k6 run loadtest.js
//
// Each virtual client sends one request after another: mostly reads of the items it created,
// some writes, a few jobs and a little CPU-bound work, so that every pool of the service is
// used. Meanwhile LIVE_VUS live clients (20 by default) each hold a WebSocket to /items/live
// for LIVE_HOLD seconds at a time, and count the changes they receive (`live_changes`). Watch
// the Grafana dashboard meanwhile (`docker compose --profile monitoring up`): the README says
// which panel shows which bottleneck. k6 prints latency percentiles and the share of failed
// requests at the end, and exits non-zero when that share passes 1 %.
import http from "k6/http";
import ws from "k6/ws";
import { check } from "k6";
import { Counter } from "k6/metrics";

const base = __ENV.BASE_URL || "http://127.0.0.1:8000";
const json = { headers: { "Content-Type": "application/json" }, timeout: "60s" };

const duration = __ENV.DURATION || "1m";
const liveHold = parseFloat(__ENV.LIVE_HOLD || "30");
const liveChanges = new Counter("live_changes");

export const options = {
  scenarios: {
    requests: {
      executor: "constant-vus",
      exec: "requests",
      vus: parseInt(__ENV.VUS || "50", 10),
      duration,
    },
    live: {
      executor: "constant-vus",
      exec: "live",
      vus: parseInt(__ENV.LIVE_VUS || "20", 10),
      duration,
      gracefulStop: `${liveHold + 5}s`,
    },
  },
  thresholds: { http_req_failed: ["rate<0.01"] },
  summaryTrendStats: ["med", "p(90)", "p(99)", "max"],
};

export function setup() {
  const ids = [];
  for (let n = 0; n < 100; n++) {
    const response = http.post(`${base}/items`, JSON.stringify({ name: `load test ${n}` }), json);
    check(response, { "item created": (r) => r.status === 201 });
    ids.push(response.json("id"));
  }
  return { ids };
}

export function requests({ ids }) {
  const roll = Math.random();
  let response;
  if (roll < 0.8) {
    const id = ids[Math.floor(Math.random() * ids.length)];
    response = http.get(`${base}/items/${id}`, { tags: { name: "GET /items/{id}" } });
  } else if (roll < 0.9) {
    const body = JSON.stringify({ name: "load test", quantity: Math.floor(Math.random() * 100) });
    response = http.post(`${base}/items`, body, { ...json, tags: { name: "POST /items" } });
  } else if (roll < 0.97) {
    const body = JSON.stringify({ text: "a job from the load test" });
    response = http.post(`${base}/jobs`, body, { ...json, tags: { name: "POST /jobs" } });
  } else {
    const body = JSON.stringify({ n: 20000 });
    response = http.post(`${base}/compute`, body, { ...json, tags: { name: "POST /compute" } });
  }
  check(response, { "answered 2xx": (r) => r.status >= 200 && r.status < 300 });
}

export function live() {
  const url = `${base.replace(/^http/, "ws")}/items/live`;
  const response = ws.connect(url, {}, (socket) => {
    socket.on("message", (message) => {
      if (JSON.parse(message).event) {
        liveChanges.add(1);
      }
    });
    socket.setTimeout(() => socket.close(), liveHold * 1000);
  });
  check(response, { "live socket opened": (r) => r && r.status === 101 });
}
