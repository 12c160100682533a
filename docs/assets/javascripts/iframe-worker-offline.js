// Search for the site opened from disk (file://), with no network.
//
// Browsers refuse `new Worker(url)` on file:// pages, and Material's search runs in a web worker.
// Material's offline plugin therefore adds a shim loaded from unpkg.com, which needs the network;
// mkdocs.yml lists this file under extra.polyfills instead (the plugin adds its own only when no
// polyfill's name contains "iframe-worker"). On file:// pages it replaces `Worker` with one that
// runs the worker script in a hidden same-origin iframe: the script's `postMessage` and
// `importScripts` are provided there, messages are passed as events. Elsewhere it does nothing.
(function () {
  "use strict";
  if (location.protocol !== "file:" || typeof window === "undefined") {
    return;
  }

  function loadScript(doc, src) {
    return new Promise(function (resolve, reject) {
      var script = doc.createElement("script");
      script.src = src;
      script.onload = function () {
        resolve();
      };
      script.onerror = function () {
        reject(new Error("cannot load " + src));
      };
      (doc.head || doc.documentElement).appendChild(script);
    });
  }

  class IFrameWorker extends EventTarget {
    constructor(url) {
      super();
      this.onmessage = null;
      this.onerror = null;
      this.addEventListener("message", function (event) {
        if (typeof this.onmessage === "function") this.onmessage(event);
      });
      this.addEventListener("error", function (event) {
        if (typeof this.onerror === "function") this.onerror(event);
      });
      this._pending = [];
      this._ready = false;

      var self = this;
      var src = new URL(url, document.baseURI).href;
      var frame = document.createElement("iframe");
      frame.hidden = true;
      frame.tabIndex = -1;
      frame.setAttribute("aria-hidden", "true");
      (document.body || document.documentElement).appendChild(frame);
      this._frame = frame;

      var scope = frame.contentWindow;
      // what a worker script sees as globals
      scope.postMessage = function (data) {
        setTimeout(function () {
          self.dispatchEvent(new MessageEvent("message", { data: data }));
        });
      };
      scope.importScripts = function () {
        var urls = Array.prototype.slice.call(arguments);
        return urls.reduce(function (done, next) {
          return done.then(function () {
            return loadScript(scope.document, new URL(next, src).href);
          });
        }, Promise.resolve());
      };
      scope.addEventListener("error", function (event) {
        self._fail(event.message || String(event.error));
      });

      loadScript(scope.document, src).then(
        function () {
          self._ready = true;
          self._pending.splice(0).forEach(function (data) {
            self._deliver(data);
          });
        },
        function (error) {
          self._fail(error.message);
        }
      );
    }

    postMessage(data) {
      if (!this._frame) return;
      if (this._ready) {
        var self = this;
        setTimeout(function () {
          self._deliver(data);
        });
      } else {
        this._pending.push(data);
      }
    }

    terminate() {
      if (this._frame) {
        this._frame.remove();
        this._frame = null;
      }
    }

    _deliver(data) {
      if (!this._frame) return;
      var scope = this._frame.contentWindow;
      scope.dispatchEvent(new scope.MessageEvent("message", { data: data }));
    }

    _fail(message) {
      this.dispatchEvent(new ErrorEvent("error", { message: message }));
    }
  }

  // the search worker looks for this name to find its lunr language files next to it
  window.IFrameWorker = IFrameWorker;
  window.Worker = IFrameWorker;
})();
