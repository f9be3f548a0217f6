/* Task Badger progress bars: the script behind {% taskbadger_progress %}.
 *
 * It finds every element with a data-taskbadger-progress attribute (now, and whenever one is added
 * later: an HTMX swap, a React render), polls its data-url and draws what the answer says. No
 * framework, no build step, nothing inline: it runs under a Content-Security-Policy that allows only
 * the site's own scripts and styles (the bar's width is set through the CSSOM, which CSP allows).
 *
 * Answers (see docs/progress.md):
 *   200  {"status", "value", "value_max", "percent", "name", "done", "awaiting_retry"}: draw it; stop when done
 *   304  nothing changed (the script sends If-None-Match)
 *   503  Task Badger is unavailable: say so, keep the bar as it was, retry with a growing delay
 *   403, 404  no progress for this viewer (an expired or foreign token, an unknown task): say so, stop
 *   a redirect, 401  a login wall in front of the URL (a login-required middleware, a single-sign-on proxy)
 *             wants the viewer to sign in: say so, stop (the redirect is not followed: it leads to a login
 *             page, HTML, or to another origin the script may not read)
 *   200, 403 that are not JSON  not the view's (it always answers JSON) but a page served in its place: a
 *             sign-in page (a single-sign-on proxy that shows its form without redirecting): the same
 * Events, on the element, bubbling: "taskbadger:progress" (every change), "taskbadger:done" (once, at
 * the end; detail.status is the final status), "taskbadger:unavailable" (detail.httpStatus, detail.retrying,
 * detail.signIn when a login wall stopped the poll); none before
 * DOMContentLoaded (they wait for it), so that the page's own deferred scripts hear them all.
 */
(function () {
  "use strict";
  if (window.TaskBadgerProgress) {
    window.TaskBadgerProgress.scan(document);
    return;
  }

  function isJson(response) {
    return /^application\/([\w.-]+\+)?json\s*(;|$)/i.test(response.headers.get("Content-Type") || "");
  }

  // data-state of the statuses drawn their own way; "stale" is not an end (the task may report again)
  var STATES = { success: "done", error: "failed", cancelled: "cancelled", stale: "stale" };
  var MAX_BACKOFF = 30; // seconds between two tries while Task Badger is failing
  var HIDDEN_DELAY = 60; // at most this many seconds between two polls of a hidden tab...
  var HIDDEN_FACTOR = 10; // ...and otherwise ten poll intervals
  var REQUEST_TIMEOUT = 20000; // ms: a poll that gets no answer by then counts as a failure

  function Bar(el) {
    this.el = el;
    this.url = el.getAttribute("data-url");
    this.poll = Math.max(0.5, parseFloat(el.getAttribute("data-poll")) || 1);
    this.hasLabel = el.hasAttribute("data-label");
    this.words = {};
    try {
      this.words = JSON.parse(el.getAttribute("data-words") || "{}");
    } catch (e) {
      this.words = {};
    }
    this.nameEl = el.querySelector(".taskbadger-progress__name");
    this.statusEl = el.querySelector(".taskbadger-progress__status");
    this.percentEl = el.querySelector(".taskbadger-progress__percent");
    this.track = el.querySelector(".taskbadger-progress__track");
    this.fill = el.querySelector(".taskbadger-progress__fill");
    this.etag = null;
    this.last = null; // the last answer drawn
    this.failures = 0;
    this.timer = null;
    this.stopped = false;
    this.hiddenWait = false;
  }

  /* Text, never HTML; written only when it changes: the status is a live region, and a screen reader
   * announces its text again each time it is replaced, even by the same words. */
  function setText(el, text) {
    if (el && el.textContent !== text) {
      el.textContent = text;
    }
  }

  Bar.prototype.word = function (key, fallback) {
    var word = this.words[key];
    return typeof word === "string" ? word : fallback;
  };

  Bar.prototype.start = function () {
    if (!this.url) {
      this.unavailable(0, true); // the task was started untracked: there is no progress to follow
      return;
    }
    this.request();
  };

  /* The bar's element left the page (a swap replaced it): it stops, and starts again if it comes back. */
  Bar.prototype.detached = function () {
    var inPage = typeof this.el.isConnected === "boolean" ? this.el.isConnected :
      document.documentElement.contains(this.el);
    if (!inPage) {
      this.stopped = true;
      forget(this);
    }
    return !inPage;
  };

  Bar.prototype.schedule = function (seconds) {
    var self = this;
    if (this.stopped || this.detached()) {
      return;
    }
    this.hiddenWait = document.hidden;
    if (document.hidden) {
      seconds = Math.max(seconds, Math.min(HIDDEN_DELAY, HIDDEN_FACTOR * this.poll));
    }
    var jitter = 0.9 + Math.random() * 0.2; // viewers who opened the page together spread out
    this.timer = window.setTimeout(function () {
      self.timer = null;
      if (!self.detached()) {
        self.request();
      }
    }, seconds * jitter * 1000);
  };

  /* The tab became visible again: a poll delayed because it was hidden happens now. */
  Bar.prototype.wake = function () {
    if (this.timer !== null && this.hiddenWait && !document.hidden) {
      window.clearTimeout(this.timer);
      this.timer = null;
      this.request();
    }
  };

  Bar.prototype.request = function () {
    var self = this;
    var headers = { Accept: "application/json" };
    if (this.etag) {
      headers["If-None-Match"] = this.etag;
    }
    var controller = typeof AbortController === "function" ? new AbortController() : null;
    var timeout = controller ? window.setTimeout(function () { controller.abort(); }, REQUEST_TIMEOUT) : null;
    window.fetch(this.url, {
      headers: headers,
      credentials: "same-origin",
      cache: "no-store",
      redirect: "manual", // the progress URL never redirects: a redirect is a login wall (see below)
      signal: controller ? controller.signal : undefined,
    }).then(function (response) {
      if ((response.status === 200 || response.status === 403) && !isJson(response)) {
        self.sentToSignIn(response.status, "a page that is not progress");
        return null;
      }
      if (response.status === 200) {
        return response.json().then(function (body) {
          self.etag = response.headers.get("ETag");
          self.answered(body);
        });
      }
      if (response.status === 304) {
        self.failures = 0;
        self.recovered();
        self.schedule(self.poll);
        return null;
      }
      if (response.status === 404) {
        self.unavailable(404, true); // no such task: reloading would not help
        return null;
      }
      if (response.type === "opaqueredirect" || response.status === 401) {
        self.sentToSignIn(response.status, response.status ? String(response.status) : "a redirect");
        return null;
      }
      if (response.status === 403 || response.status === 400 || response.status === 410) {
        self.unavailable(response.status, true);
        return null;
      }
      self.failed(response.status); // 503 (Task Badger is failing), 5xx, a proxy's error page...
      return null;
    }).catch(function () {
      self.failed(0); // no answer: the network, or the time limit
    }).then(function () {
      if (timeout !== null) {
        window.clearTimeout(timeout);
      }
    });
  };

  Bar.prototype.answered = function (body) {
    this.failures = 0;
    this.recovered();
    if (!body || typeof body !== "object") {
      this.failed(200);
      return;
    }
    if (body.status === null || body.status === undefined) {
      this.schedule(this.poll); // the first read of the task is under way elsewhere
      return;
    }
    this.draw(body);
    this.emit("taskbadger:progress", body);
    if (body.done) {
      this.stopped = true;
      this.emit("taskbadger:done", body);
      return;
    }
    this.schedule(this.poll);
  };

  Bar.prototype.draw = function (body) {
    var status = String(body.status);
    var percent = typeof body.percent === "number" && isFinite(body.percent) ?
      Math.max(0, Math.min(100, Math.floor(body.percent))) : null;
    var state = STATES[status] || (body.done ? "done" : (percent === null ? "indeterminate" : "running"));
    this.last = body;
    this.el.setAttribute("data-state", state);
    this.el.setAttribute("data-status", status);
    if (!this.hasLabel && typeof body.name === "string") {
      setText(this.nameEl, body.name);
    }
    // pending again after an attempt that ran (a retry's countdown): waiting, not queued as if it had never run
    setText(this.statusEl, status === "pending" && body.awaiting_retry === true ?
      this.word("_awaiting_retry", "Waiting to retry") : this.word(status, status));
    setText(this.percentEl, percent === null ? "" : percent + "%");
    if (this.track) {
      if (percent === null) {
        this.track.removeAttribute("aria-valuenow"); // an indeterminate progressbar has no value
        this.track.removeAttribute("aria-valuetext");
      } else {
        this.track.setAttribute("aria-valuenow", String(percent));
        this.track.setAttribute("aria-valuetext", percent + "%");
      }
    }
    if (this.fill) {
      // The CSSOM, not a style attribute: allowed under a strict Content-Security-Policy.
      this.fill.style.width = percent === null ? "" : percent + "%";
    }
  };

  Bar.prototype.failed = function (httpStatus) {
    this.failures += 1;
    this.el.setAttribute("data-unavailable", "");
    setText(this.statusEl, this.word("_unavailable", "Progress is unavailable right now; retrying…"));
    if (this.failures === 1) {
      this.emit("taskbadger:unavailable", { httpStatus: httpStatus, retrying: true });
    }
    this.schedule(Math.min(Math.max(MAX_BACKOFF, this.poll), this.poll * Math.pow(2, this.failures)));
  };

  Bar.prototype.recovered = function () {
    if (this.el.hasAttribute("data-unavailable")) {
      this.el.removeAttribute("data-unavailable");
      if (this.last) {
        this.draw(this.last);
      }
    }
  };

  /* Sent to sign in: by a login-required middleware or a single-sign-on proxy that does not exempt this URL, or
   * because the viewer's session there ended. Polling again would only poll the login page. */
  Bar.prototype.sentToSignIn = function (httpStatus, how) {
    if (window.console && window.console.warn) {
      window.console.warn("Task Badger progress: " + this.url + " was sent to sign in (" + how +
        "); a login wall in front of the site must let it through.");
    }
    this.unavailable(httpStatus, true, true);
  };

  Bar.prototype.unavailable = function (httpStatus, final, signIn) {
    this.stopped = final;
    this.el.setAttribute("data-state", "unavailable");
    setText(this.statusEl, signIn ? this.word("_signin", "Sign in again to see progress.") :
      httpStatus === 0 || httpStatus === 404 ?
        this.word("_untracked", "Progress is not available for this task.") :
        this.word("_gone", "Progress is not available."));
    setText(this.percentEl, "");
    if (this.track) {
      this.track.removeAttribute("aria-valuenow");
      this.track.removeAttribute("aria-valuetext");
    }
    if (this.fill) {
      this.fill.style.width = "";
    }
    var detail = { httpStatus: httpStatus, retrying: false };
    if (signIn) {
      detail.signIn = true;
    }
    this.emit("taskbadger:unavailable", detail);
  };

  Bar.prototype.emit = function (name, body) {
    var detail = {};
    for (var key in body) {
      if (Object.prototype.hasOwnProperty.call(body, key)) {
        detail[key] = body[key];
      }
    }
    if (held !== null && !contentLoaded()) {
      held.push([this.el, name, detail]); // sent at DOMContentLoaded, once the page's own scripts listen
      return;
    }
    dispatch(this.el, name, detail);
  };

  function dispatch(el, name, detail) {
    var event;
    if (typeof window.CustomEvent === "function") {
      event = new window.CustomEvent(name, { bubbles: true, detail: detail });
    } else {
      event = document.createEvent("CustomEvent");
      event.initCustomEvent(name, true, false, detail);
    }
    el.dispatchEvent(event);
  }

  /* Events are held until DOMContentLoaded: the page's own deferred and module scripts (its "taskbadger:done"
   * listeners) run before it, but after this script when they come later in the page, and a bar whose task
   * had already ended would fire its events before anyone listened. The bars draw at once all the same. */
  var held = [];

  function contentLoaded() {
    if (document.readyState !== "interactive") {
      return document.readyState === "complete";
    }
    // "interactive": deferred scripts are running, or DOMContentLoaded has fired and "load" has not
    var perf = window.performance;
    var nav = perf && perf.getEntriesByType ? perf.getEntriesByType("navigation")[0] : null;
    var timing = nav || (perf && perf.timing);
    return !timing || timing.domContentLoadedEventStart > 0;
  }

  function release() {
    var events = held;
    held = null;
    for (var i = 0; events && i < events.length; i++) {
      dispatch(events[i][0], events[i][1], events[i][2]);
    }
  }

  if (contentLoaded()) {
    held = null;
  } else {
    document.addEventListener("DOMContentLoaded", release);
  }

  var bars = [];

  function forget(bar) {
    var at = bars.indexOf(bar);
    if (at !== -1) {
      bars.splice(at, 1);
    }
    if (bar.el.taskbadgerProgress === bar) {
      delete bar.el.taskbadgerProgress;
    }
  }

  function attach(el) {
    if (el.taskbadgerProgress) {
      return;
    }
    var bar = new Bar(el);
    el.taskbadgerProgress = bar;
    bars.push(bar);
    bar.start();
  }

  /* Start every bar under root (the document, or content added later). */
  function scan(root) {
    if (root.nodeType === 1 && root.hasAttribute("data-taskbadger-progress")) {
      attach(root);
    }
    if (root.querySelectorAll) {
      var found = root.querySelectorAll("[data-taskbadger-progress]");
      for (var i = 0; i < found.length; i++) {
        attach(found[i]);
      }
    }
  }

  document.addEventListener("visibilitychange", function () {
    for (var i = 0; i < bars.length; i++) {
      bars[i].wake();
    }
  });

  function watch() {
    scan(document);
    if (typeof MutationObserver === "function") {
      new MutationObserver(function (mutations) {
        for (var i = 0; i < mutations.length; i++) {
          var added = mutations[i].addedNodes;
          for (var j = 0; j < added.length; j++) {
            if (added[j].nodeType === 1) {
              scan(added[j]);
            }
          }
        }
      }).observe(document.documentElement, { childList: true, subtree: true });
    }
  }

  window.TaskBadgerProgress = { scan: scan };
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", watch);
  } else {
    watch();
  }
})();
