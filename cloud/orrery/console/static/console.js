// The rollout page updates itself: every 2 s it fetches the rollout's status (JSON) and puts
// the new numbers in place; the soak countdown ticks every second in between.
(function () {
  "use strict";
  var url = document.body.getAttribute("data-poll");
  if (!url) return;
  var PERIOD = 2000;

  function text(id, value) {
    var el = document.getElementById(id);
    if (el && el.textContent !== String(value)) el.textContent = String(value);
    return el;
  }

  function stateClass(el, state) {
    if (!el) return;
    el.className = el.className.replace(/\bstate-\S+/g, "").trim() + " state-" + state;
  }

  function apply(data) {
    var s = data.summary, d = data.detail;
    stateClass(text("state", s.state), s.state);
    text("reason", s.reason || "");
    text("converged", s.converged_text);
    text("wave", s.wave);
    s.waves.forEach(function (w) {
      var row = document.getElementById("wave-" + w.wave);
      if (!row) return;
      var done = w.states.succeeded || 0;
      row.querySelector(".done").textContent = String(done);
      row.querySelector(".total").textContent = String(w.total);
      var bar = row.querySelector("progress");
      bar.max = w.total || 1;
      bar.value = done;
      row.querySelector(".states").textContent = Object.keys(w.states).sort().map(function (k) {
        return k + " " + w.states[k];
      }).join(", ");
      row.classList.toggle("current", w.wave === s.wave);
    });
    var soak = document.getElementById("soak");
    if (d.soak) {
      soak.hidden = false;
      text("soak-wave", d.soak.wave);
      text("soak-ends", d.soak.ends);
      var left = text("soak-left", d.soak.left_s);
      left.setAttribute("data-left", d.soak.left_s);
    } else if (soak) {
      soak.hidden = true;
    }
    text("n-up", d.health.upgraded);
    text("n-ctl", d.health.control);
    Object.keys(d.health.metrics).forEach(function (k) {
      var row = document.querySelector('#health tr[data-metric="' + k + '"]');
      if (!row) {
        var empty = document.querySelector("#health tr.empty");
        if (empty) empty.remove();
        row = document.createElement("tr");
        row.setAttribute("data-metric", k);
        ["name", "num up", "num ctl", "num p"].forEach(function (c) {
          var td = document.createElement("td");
          td.className = c;
          row.appendChild(td);
        });
        row.firstChild.textContent = k;
        document.querySelector("#health tbody").appendChild(row);
      }
      var m = d.health.metrics[k];
      row.querySelector(".up").textContent = String(m.upgraded);
      row.querySelector(".ctl").textContent = String(m.control);
      row.querySelector(".p").textContent = String(m.p);
    });
    var reg = document.getElementById("regressed");
    reg.hidden = !d.health.regressed.length;
    reg.textContent = d.health.regressed.join("; ");
    data.members.forEach(function (m) {
      var row = document.getElementById("m-" + m.device);
      if (!row) return;
      var st = row.querySelector(".mstate span");
      st.textContent = m.state;
      stateClass(st, m.state);
      row.querySelector(".mreason").textContent = m.reason || "";
      row.querySelector(".mattempts").textContent = String(m.attempts);
      row.querySelector(".mupdated").textContent = m.updated || "–";
    });
    document.querySelectorAll("#actions form[data-when]").forEach(function (f) {
      f.hidden = f.getAttribute("data-when").split(" ").indexOf(s.state) < 0;
    });
  }

  function poll() {
    fetch(url, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (r.status === 401) { window.location.reload(); throw new Error("logged out"); }
        return r.json();
      })
      .then(function (data) {
        apply(data);
        text("live", "live · updated " + new Date().toLocaleTimeString());
      })
      .catch(function () { text("live", "live · not reachable, retrying"); })
      .then(function () { setTimeout(poll, PERIOD); });
  }

  function tick() {
    var el = document.getElementById("soak-left");
    if (el && el.getAttribute("data-left") !== "") {
      var left = Math.max(0, parseInt(el.getAttribute("data-left"), 10) - 1);
      el.setAttribute("data-left", left);
      el.textContent = String(left);
    }
  }

  setTimeout(poll, PERIOD);
  setInterval(tick, 1000);
})();
