// Progressive enhancement only: every page works without this file.
// 1. Show a field only when it applies (data-show-if="name=value;name=value": all must hold).
// 2. Move focus to the error summary after a failed submit.
// 3. Live validation against POST /api/orders/validate: warnings at once, errors for fields already touched.
// 4. Disable a submit button after the first click (the server's idempotency token is the real guard).
// 5. Count the callback clock down from the server's seconds-left (never the browser's own clock).
// 6. An error-summary link moves focus to its field and shows the field's label or legend too (a plain
//    fragment link scrolls the field to the very top, its label out of sight).
// 7. A character counter under a text area (data-count-for): shown as you type, spoken when typing pauses.
(function () {
  "use strict";

  function checkedValues(form, name) {
    return Array.prototype.map.call(form.querySelectorAll('input[name="' + name + '"]:checked'), function (i) { return i.value; });
  }

  function applyConditions(form) {
    form.querySelectorAll("[data-show-if]").forEach(function (el) {
      var show = el.getAttribute("data-show-if").split(";").every(function (cond) {
        var kv = cond.split("=");
        return checkedValues(form, kv[0]).indexOf(kv[1]) !== -1;
      });
      // Never hide a field that shows an error: the person must be able to see and fix it.
      el.hidden = !show && !el.querySelector(".has-error") && !el.classList.contains("has-error");
    });
  }

  function body(form) {
    var f = new FormData(form);
    var type = form.getAttribute("data-order-type");
    var unit = form.querySelector("#care_unit_hsa_id");
    var opt = unit && unit.options[unit.selectedIndex];
    var raw = {
      order_type: type, initiative: f.get("initiative") || null,
      patient_personal_number: f.get("patient_personal_number") || "",
      patient_protected_identity: f.has("patient_protected_identity"), urgent: f.has("urgent"),
      reason: f.get("reason") || "", care_unit_hsa_id: f.get("care_unit_hsa_id") || "",
      region: (opt && opt.getAttribute("data-region")) || null
    };
    if (f.get("callback_phone")) { raw.callback_phone = f.get("callback_phone"); }
    if (type === "seal_or_lock" || type === "restore_access") { raw.actions = f.getAll("actions"); }
    if (type === "restore_access") { raw.identity_checked_in_person = f.has("identity_checked_in_person"); }
    var recipient = f.get("minor_recipient");
    if (type === "block_guardian" || (type === "minor_access" && recipient === "guardian")) {
      raw.guardian_personal_number = f.get("guardian_personal_number") || "";
      raw.guardian_protected_identity = f.has("guardian_protected_identity");
    }
    if (type === "minor_access") {
      var g = f.get("minor_grant");
      raw.minor_access = { grant: g === "grant" ? true : (g === "revoke" ? false : null),
                           recipient: recipient || null, child_consent: f.has("child_consent") };
    }
    return raw;
  }

  function showWarnings(region, warnings) {
    region.textContent = "";
    if (!warnings.length) { return; }
    var box = document.createElement("div"); box.className = "warnings";
    var h = document.createElement("h2"); h.textContent = "Observera"; box.appendChild(h);
    var ul = document.createElement("ul");
    warnings.forEach(function (w) { var li = document.createElement("li"); li.textContent = w.message; ul.appendChild(li); });
    box.appendChild(ul);
    region.appendChild(box);
  }

  function showErrors(form, errors, touched) {
    form.querySelectorAll(".form-group[data-fields]").forEach(function (group) {
      var fields = group.getAttribute("data-fields").split(" ");
      var name = fields[0];
      if (!touched[name]) { return; }
      var messages = errors.filter(function (e) { return fields.indexOf(e.field) !== -1; }).map(function (e) { return e.message; });
      var p = group.querySelector(".field-error");
      if (!p) { return; }
      p.textContent = "";
      messages.forEach(function (m, i) {
        if (i) { p.appendChild(document.createElement("br")); }
        var s = document.createElement("span"); s.className = "visually-hidden"; s.textContent = "Fel: ";
        p.appendChild(s); p.appendChild(document.createTextNode(m));
      });
      p.hidden = !messages.length;
      group.classList.toggle("has-error", messages.length > 0);
      group.querySelectorAll("input, select, textarea, fieldset").forEach(function (el) {
        if (messages.length) { el.setAttribute("aria-invalid", "true"); } else { el.removeAttribute("aria-invalid"); }
      });
    });
  }

  function liveValidation(form) {
    var box = document.getElementById("live-warnings");
    var token = document.querySelector('meta[name="csrf-token"]');
    var touched = {};
    var timer = null;
    function run() {
      fetch(form.getAttribute("data-validate-url"), {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": token ? token.content : "" },
        body: JSON.stringify(body(form))
      }).then(function (r) { return r.ok || r.status === 422 ? r.json() : null; }).then(function (res) {
        if (!res) { return; }
        if (box) { showWarnings(box, res.warnings || []); }
        showErrors(form, res.errors || [], touched);
      }).catch(function () { /* offline: the server checks again on submit */ });
    }
    form.addEventListener("change", function (ev) {
      var group = ev.target.closest(".form-group[data-fields]");
      if (group) { touched[group.getAttribute("data-fields").split(" ")[0]] = true; }
      clearTimeout(timer); timer = setTimeout(run, 300);
    });
  }

  function countdowns() {
    var timers = Array.prototype.slice.call(document.querySelectorAll("[data-seconds-left]"));
    if (!timers.length) { return; }
    var started = Date.now();
    function tick() {
      var elapsed = Math.floor((Date.now() - started) / 1000);
      timers.forEach(function (el) {
        var left = parseInt(el.getAttribute("data-seconds-left"), 10) - elapsed;
        if (left <= 0) {
          el.textContent = "Tiden har gått ut";
          el.classList.add("is-late");
          return;
        }
        // The server's words: "29 min 40 s kvar", "3 h 20 min kvar", "2 d 4 h kvar".
        var d = Math.floor(left / 86400), h = Math.floor(left % 86400 / 3600), m = Math.floor(left % 3600 / 60), s = left % 60;
        el.textContent = d ? d + " d " + h + " h kvar" : h ? h + " h " + m + " min kvar" : m + " min " + s + " s kvar";
      });
    }
    tick();
    setInterval(tick, 1000);
  }

  function errorSummaryLinks() {
    document.querySelectorAll(".error-summary a[href^='#']").forEach(function (a) {
      a.addEventListener("click", function (ev) {
        var target = document.getElementById(a.getAttribute("href").slice(1));
        if (!target) { return; }
        ev.preventDefault();
        if (!target.matches("a[href], button, input, select, textarea, [tabindex]")) { target.setAttribute("tabindex", "-1"); }
        var group = target.closest("fieldset");
        var caption = (group && group.querySelector("legend")) || document.querySelector('label[for="' + target.id + '"]');
        (caption || target).scrollIntoView({ block: "start" });
        target.focus({ preventScroll: true });
      });
    });
  }

  function characterCounters() {
    document.querySelectorAll("[data-count-for]").forEach(function (counter) {
      var field = document.getElementById(counter.getAttribute("data-count-for"));
      var live = document.getElementById(counter.id + "-live");
      var max = parseInt(counter.getAttribute("data-max"), 10);
      if (!field) { return; }
      var timer = null;
      function message() {
        var left = max - field.value.length;
        return left >= 0 ? "Du har " + left + " tecken kvar av " + max + "."
                         : "Du har " + (-left) + " tecken för mycket (högst " + max + ").";
      }
      function update() {
        counter.textContent = message();
        counter.classList.toggle("is-over", field.value.length > max);
        clearTimeout(timer);
        timer = setTimeout(function () { if (live) { live.textContent = message(); } }, 1000);
      }
      counter.hidden = false;
      counter.textContent = message();
      field.addEventListener("input", update);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    countdowns();
    characterCounters();
    errorSummaryLinks();
    var summary = document.querySelector("[data-focus-on-load]");
    if (summary) { summary.focus(); }
    document.querySelectorAll("form").forEach(function (form) {
      if (form.querySelector("[data-show-if]")) {
        applyConditions(form);
        form.addEventListener("change", function () { applyConditions(form); });
      }
      if (form.hasAttribute("data-validate-url")) { liveValidation(form); }
      form.addEventListener("submit", function (e) {
        var b = form.querySelector("[data-once]");
        // Only the button that submits: printing the paper form (another submit button) leaves it usable.
        if (b && (!e.submitter || e.submitter === b)) {
          setTimeout(function () { b.disabled = true; b.setAttribute("aria-disabled", "true"); }, 0);
        }
      });
    });
  });
}());
