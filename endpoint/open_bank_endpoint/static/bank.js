// The bank's page: plain JavaScript over the endpoint's WebSocket (subscriptions-transport-ws, subprotocol
// graphql-ws), as the reference frontend talks to it. No build step, nothing loaded from elsewhere.
"use strict";

const COMPANY_IBAN = "NL66OPEN0000000000";
const MAX_ITEMS = 10;
const TRANSACTION_FIELDS = "{id iban new_balance changed_by from_to descr direction}";
const TRANSFER = `subscription ($amount: Int! $uuid: String! $username: String! $to: String! $token: String! $from: String! $descr: String!) {
  money_transfer(amount: $amount uuid: $uuid username: $username to: $to token: $token from: $from descr: $descr) {reason success uuid}}`;

// -- the GraphQL client -------------------------------------------------------------------------------------

class GraphQLSocket {
  constructor(url, onState) {
    this.url = url;
    this.onState = onState;
    this.operations = new Map(); // id -> {payload, handlers}
    this.nextId = 1;
    this.open = false;
    this.retryMs = 250;
    this.connect();
  }

  connect() {
    const ws = new WebSocket(this.url, "graphql-ws");
    this.ws = ws;
    ws.onopen = () => ws.send(JSON.stringify({ type: "connection_init", payload: {} }));
    ws.onmessage = (event) => this.receive(JSON.parse(event.data));
    ws.onclose = () => {
      this.open = false;
      this.onState(false);
      setTimeout(() => this.connect(), this.retryMs);
      this.retryMs = Math.min(this.retryMs * 2, 5000);
    };
  }

  receive(message) {
    const op = this.operations.get(message.id);
    switch (message.type) {
      case "connection_ack":
        this.open = true;
        this.retryMs = 250;
        this.onState(true);
        // what was started while the socket was down is started now (a transfer keeps its uuid, so a
        // command sent twice is answered once by the handler)
        for (const [id, o] of this.operations) this.send(id, o.payload);
        break;
      case "data":
        if (!op) return;
        if (message.payload && message.payload.errors) op.handlers.error(message.payload.errors.map((e) => e.message).join("; "));
        else op.handlers.data(message.payload.data);
        break;
      case "error":
        if (!op) return;
        this.operations.delete(message.id);
        op.handlers.error(message.payload && message.payload.message ? message.payload.message : "the request was refused");
        break;
      case "complete":
        if (op) { this.operations.delete(message.id); op.handlers.complete(); }
        break;
      default: // "ka" keep-alives
    }
  }

  send(id, payload) {
    if (this.open) this.ws.send(JSON.stringify({ id, type: "start", payload }));
  }

  start(query, variables, handlers) {
    const id = String(this.nextId++);
    const payload = { query, variables };
    const all = { data() {}, error() {}, complete() {}, ...handlers };
    this.operations.set(id, { payload, handlers: all });
    this.send(id, payload);
    return () => {
      if (this.operations.delete(id) && this.open) this.ws.send(JSON.stringify({ id, type: "stop" }));
    };
  }

  // one answer: a query, or a subscription that answers once (get_account, money_transfer)
  request(query, variables) {
    return new Promise((resolve, reject) => {
      let stop = null;
      stop = this.start(query, variables, {
        data: (data) => { resolve(data); if (stop) stop(); },
        error: (reason) => { reject(new Error(reason)); if (stop) stop(); },
      });
    });
  }
}

// -- helpers --------------------------------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);

function euro(cents) {
  const sign = cents < 0 ? "-" : "";
  const abs = Math.abs(cents);
  const whole = Math.floor(abs / 100).toString().replace(/\B(?=(\d{3})+(?!\d))/g, ".");
  return `€${sign}${whole},${String(abs % 100).padStart(2, "0")}`;
}

// "12,50", "12.50", "1.234,56", "€ 10": cents, or null
function parseEuro(text) {
  const t = text.trim().replace(/^€/, "").replace(/\s/g, "");
  let m = /^(\d{1,7})(?:[.,](\d{1,2}))?$/.exec(t) || /^(\d{1,3}(?:\.\d{3})+)(?:,(\d{1,2}))?$/.exec(t);
  if (!m) return null;
  const cents = parseInt(m[1].replace(/\./g, ""), 10) * 100 + (m[2] ? parseInt(m[2].padEnd(2, "0"), 10) : 0);
  return cents > 0 && cents < 100000000 ? cents : null;
}

function uuid4() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40; b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function notify(id, kind, text) {
  const el = $(id);
  el.className = `notification ${kind}`;
  el.textContent = text;
  el.hidden = !text;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c);
  return node;
}

// -- state ------------------------------------------------------------------------------------------------------

const state = {
  view: "home",
  login: null, // {username, iban, token}
  loggingIn: false,
  following: null, // the IBAN whose transactions show
  transactions: new Map(), // id -> transaction, of the IBAN followed
  stopStream: null,
  stopAll: null,
  accounts: new Map(), // iban -> last transaction (employee view)
  selected: null,
};

const client = new GraphQLSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/graphql-ws`, (up) => {
  const c = $("connection");
  c.textContent = up ? "connected" : "reconnecting…";
  c.classList.toggle("ok", up);
});

// -- the transaction list -------------------------------------------------------------------------------------

function transactionBox(t) {
  const credit = t.direction === "CREDIT";
  return el("div", { class: `box ${credit ? "credit" : "debit"}`, id: `transaction-box-${t.id}` },
    el("div", { class: "columns" },
      el("div", { class: "column" },
        el("p", {}, el("span", { class: "icon", title: credit ? "credit" : "debit" }, credit ? "▲" : "▼"),
          el("span", { class: "amount" }, t.changed_by)),
        el("p", { class: "from-to" }, `${credit ? "from" : "to"} ${t.from_to}`),
        el("p", { class: "tid" }, `#${t.id}`)),
      el("div", { class: "column" }, el("p", { class: "descr" }, t.descr)),
      el("div", { class: "column" },
        el("p", { class: "balance" }, t.new_balance),
        el("p", { class: "iban" }, t.iban))));
}

function renderTransactions() {
  const list = [...state.transactions.values()].sort((a, b) => b.id - a.id).slice(0, MAX_ITEMS);
  for (const id of state.transactions.keys()) if (!list.some((t) => t.id === id)) state.transactions.delete(id);
  $("transactions").replaceChildren(...list.map(transactionBox));
  $("transactions-empty").hidden = !state.following || list.length > 0;
}

function follow(iban, title) {
  if (state.stopStream) { state.stopStream(); state.stopStream = null; }
  state.following = iban;
  state.transactions = new Map();
  renderTransactions();
  const info = $("following");
  info.hidden = !iban;
  info.textContent = iban ? title : "";
  if (!iban) return;
  // the stream first, then the last ones: nothing that happens in between is missed
  state.stopStream = client.start(`subscription ($iban: String) {stream_transactions(iban: $iban) ${TRANSACTION_FIELDS}}`,
    { iban }, {
      data: (d) => { if (state.following === iban) { state.transactions.set(d.stream_transactions.id, d.stream_transactions); renderTransactions(); } },
      error: (reason) => { info.textContent = `${title} (live updates stopped: ${reason})`; },
    });
  client.request(`query ($iban: String! $max: Int!) {transactions_by_iban(iban: $iban max_items: $max) ${TRANSACTION_FIELDS}}`,
    { iban, max: MAX_ITEMS })
    .then((d) => {
      if (state.following !== iban) return;
      for (const t of d.transactions_by_iban || []) state.transactions.set(t.id, t);
      renderTransactions();
    })
    .catch((err) => { info.textContent = `${title} (could not load: ${err.message})`; });
}

// -- money ------------------------------------------------------------------------------------------------------

let pendingCount = 0;
function pending(text) {
  const line = el("p", {}, `${text}…`);
  $("pending").append(line);
  pendingCount++;
  return () => { line.remove(); pendingCount--; };
}

function transfer(cents, to, descr, resultId) {
  const login = state.login;
  const done = pending(`${euro(cents)} to ${to}`);
  return client.request(TRANSFER, { amount: cents, uuid: uuid4(), username: login.username, token: login.token, from: login.iban, to, descr })
    .then((d) => {
      const r = d.money_transfer;
      if (r.success) notify(resultId, "success", `${euro(cents)} sent to ${to}.`);
      else notify(resultId, "error", `${euro(cents)} not transferred: ${r.reason}`);
      return r;
    })
    .catch((err) => notify(resultId, "error", `${euro(cents)} not transferred: ${err.message}`))
    .finally(done);
}

function deposit(cents) {
  const login = state.login;
  if (!login) return;
  const done = pending(`depositing ${euro(cents)}`);
  client.request(TRANSFER, { amount: cents, uuid: uuid4(), username: login.username, token: "cash", from: "cash", to: login.iban, descr: "deposit" })
    .then((d) => {
      const r = d.money_transfer;
      if (r.success) notify("deposit-result", "success", `${euro(cents)} deposited.`);
      else notify("deposit-result", "error", `${euro(cents)} not deposited: ${r.reason}`);
    })
    .catch((err) => notify("deposit-result", "error", `${euro(cents)} not deposited: ${err.message}`))
    .finally(done);
}

function submitTransfer() {
  if (!state.login) return;
  const cents = parseEuro($("transfer-amount").value);
  const to = $("transfer-to").value.trim().toUpperCase().replace(/\s/g, "");
  const descr = $("transfer-descr").value.trim();
  const problems = [];
  if (cents === null) problems.push("an amount in euro between 0,01 and 999.999,99, such as 12,50");
  if (to.length < 8) problems.push("the IBAN to send to");
  if (!descr) problems.push("a description");
  if (problems.length) { notify("transfer-result", "warning", `Please give ${problems.join(", ")}.`); return; }
  $("transfer-form").reset();
  notify("transfer-result", "info", `Sending ${euro(cents)} to ${to}…`);
  transfer(cents, to, descr, "transfer-result");
}

// -- logging in -------------------------------------------------------------------------------------------------

function login() {
  if (state.loggingIn || state.login) return;
  const username = $("login-username").value.trim();
  const password = $("login-password").value;
  if (username.length < 8 || password.length < 8) {
    notify("login-result", "warning", "Username and password need at least 8 characters each.");
    return;
  }
  state.loggingIn = true;
  $("login-button").classList.add("busy");
  $("login-button").textContent = "Logging in…";
  notify("login-result", "info", "Opening your account, or logging in…");
  client.request("subscription ($username: String! $password: String!) {get_account(username: $username password: $password) {reason iban token}}",
    { username, password })
    .then((d) => {
      const r = d.get_account;
      if (r.reason || !r.iban) { notify("login-result", "error", `Not logged in: ${r.reason || "no account"}`); return; }
      state.login = { username, iban: r.iban, token: r.token };
      $("login-form").reset();
      notify("login-result", "", "");
      showLogin();
    })
    .catch((err) => notify("login-result", "error", `Not logged in: ${err.message}`))
    .finally(() => {
      state.loggingIn = false;
      $("login-button").classList.remove("busy");
      $("login-button").textContent = "Login";
    });
}

function logout() {
  state.login = null;
  showLogin();
}

function showLogin() {
  const l = state.login;
  $("login-form").hidden = !!l;
  $("logged-in").hidden = !l;
  $("account").hidden = !l;
  $("deposits").hidden = !l;
  $("deposit-hint").hidden = !!l;
  $("client-intro").hidden = !!l;
  if (l) {
    $("logged-in-user").textContent = l.username;
    $("account-iban").textContent = l.iban;
    $("account-token").textContent = l.token;
  }
  if (state.view === "client") follow(l ? l.iban : null, l ? `Your last transactions, account ${l.iban}` : "");
}

// -- the employee's view ----------------------------------------------------------------------------------------

function renderAccounts() {
  const rows = [...state.accounts.values()].sort((a, b) => a.iban.localeCompare(b.iban)).map((t) => {
    const row = el("tr", { "data-iban": t.iban, class: t.iban === state.selected ? "selected" : "" },
      el("td", { class: "iban" }, t.iban), el("td", {}, t.new_balance),
      el("td", {}, `${t.direction === "DEBIT" ? "-" : "+"}${t.changed_by}`));
    row.addEventListener("click", () => {
      state.selected = t.iban;
      renderAccounts();
      $("employee-hint").hidden = true;
      follow(t.iban, `Following account ${t.iban}`);
    });
    return row;
  });
  document.querySelector("#accounts tbody").replaceChildren(...rows);
  $("accounts-empty").hidden = rows.length > 0;
}

function loadAccounts() {
  client.request(`{all_last_transactions ${TRANSACTION_FIELDS}}`)
    .then((d) => {
      for (const t of d.all_last_transactions || []) {
        const known = state.accounts.get(t.iban);
        if (!known || known.id < t.id) state.accounts.set(t.iban, t);
      }
      renderAccounts();
    })
    .catch((err) => { $("accounts-empty").hidden = false; $("accounts-empty").textContent = `Could not load the accounts: ${err.message}`; });
}

function employeeView(on) {
  if (state.stopAll) { state.stopAll(); state.stopAll = null; }
  if (!on) return;
  let queued = false;
  state.stopAll = client.start(`subscription {stream_transactions ${TRANSACTION_FIELDS}}`, {}, {
    data: (d) => {
      state.accounts.set(d.stream_transactions.iban, d.stream_transactions);
      if (!queued) { queued = true; requestAnimationFrame(() => { queued = false; renderAccounts(); }); }
    },
  });
  loadAccounts();
}

// -- views ------------------------------------------------------------------------------------------------------

function showView(view) {
  state.view = view;
  for (const a of document.querySelectorAll("#nav-bar a[data-view]")) a.classList.toggle("active", a.dataset.view === view);
  for (const part of document.querySelectorAll("[data-only]")) part.hidden = part.dataset.only !== view;
  employeeView(view === "employee");
  if (view === "home") follow(COMPANY_IBAN, `Transactions of the bank's own account ${COMPANY_IBAN}`);
  else if (view === "client") showLogin();
  else follow(state.selected, state.selected ? `Following account ${state.selected}` : "");
  if (view === "employee") $("employee-hint").hidden = !!state.selected;
}

const VIEWS = { "/": "home", "/client": "client", "/employee": "employee" };
document.addEventListener("click", (event) => {
  const link = event.target.closest("a[data-view]");
  if (!link) return;
  event.preventDefault();
  history.pushState({}, "", link.getAttribute("href"));
  showView(link.dataset.view);
});
window.addEventListener("popstate", () => showView(VIEWS[location.pathname] || "home"));

for (const button of document.querySelectorAll(".deposit")) {
  button.addEventListener("click", (e) => { e.preventDefault(); deposit(parseInt(button.dataset.cents, 10)); });
}
$("transfer-button").addEventListener("click", (e) => { e.preventDefault(); submitTransfer(); });
$("transfer-form").addEventListener("submit", (e) => e.preventDefault());
$("login-form").addEventListener("submit", (e) => e.preventDefault());
$("login-button").addEventListener("click", (e) => { e.preventDefault(); login(); });
$("login-password").addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); login(); } });
$("logout-button").addEventListener("click", (e) => { e.preventDefault(); logout(); });
$("refresh-accounts").addEventListener("click", (e) => { e.preventDefault(); loadAccounts(); });

showView(VIEWS[location.pathname] || "home");

// the page's buttons are links without an address (as the reference's): Enter and Space press them too
document.addEventListener("keydown", (e) => {
  const button = e.target.closest && e.target.closest('[role="button"]');
  if (button && (e.key === "Enter" || e.key === " ")) { e.preventDefault(); button.click(); }
});
