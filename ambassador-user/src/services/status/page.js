// ambassador's status page: fetches the page again every few seconds and swaps its <main>
// for the fresh one, so the page stays current without a reload. Nothing else: the page is
// complete without this script.
"use strict";

(() => {
  const every = Number(document.body.dataset.refreshMs) || 2000;
  let refreshes = 0;

  async function refresh() {
    const stale = document.getElementById("stale");
    try {
      const answer = await fetch(location.pathname, { cache: "no-store" });
      if (!answer.ok) {
        throw new Error(`HTTP ${answer.status}: ${(await answer.text()).trim()}`);
      }
      const page = new DOMParser().parseFromString(await answer.text(), "text/html");
      const fresh = page.querySelector("main");
      if (!fresh) {
        throw new Error("the answer holds no status");
      }
      refreshes += 1;
      fresh.dataset.refreshes = String(refreshes);
      document.querySelector("main").replaceWith(fresh);
      stale.textContent = "";
      document.body.classList.remove("stale");
    } catch (e) {
      stale.textContent = `The daemon did not answer (${e.message}); this is what it said last.`;
      document.body.classList.add("stale");
    }
    setTimeout(refresh, every);
  }

  setTimeout(refresh, every);
})();
