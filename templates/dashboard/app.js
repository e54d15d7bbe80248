// Shows every <time datetime="…"> in the browser's own time zone, and tells the server the zone's offset
// (cookie) so pages rendered later already use it.
(function () {
  "use strict";
  var offset = -new Date().getTimezoneOffset();
  document.cookie = "tz_offset=" + offset + "; path=/dashboard; max-age=31536000; SameSite=Strict";
  var zone = "";
  try { zone = Intl.DateTimeFormat().resolvedOptions().timeZone || ""; } catch (e) { zone = ""; }
  var fmt;
  try {
    fmt = new Intl.DateTimeFormat(undefined, { year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
  } catch (e) { return; }
  function localize() {
    var times = document.querySelectorAll("time[datetime]");
    for (var i = 0; i < times.length; i++) {
      var d = new Date(times[i].getAttribute("datetime"));
      if (!isNaN(d.getTime())) {
        times[i].title = times[i].getAttribute("datetime");
        times[i].textContent = fmt.format(d);
      }
    }
    var tz = document.querySelectorAll(".tz");
    for (var j = 0; j < tz.length; j++) {
      if (zone) { tz[j].textContent = zone; }
    }
  }
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", localize); } else { localize(); }
})();

// "Copy" buttons: copy the named field's text, and say so.
(function () {
  "use strict";
  function bind() {
    var buttons = document.querySelectorAll("button[data-copy]");
    for (var i = 0; i < buttons.length; i++) {
      buttons[i].addEventListener("click", function (ev) {
        var field = document.getElementById(ev.currentTarget.getAttribute("data-copy"));
        var said = ev.currentTarget.parentNode.querySelector(".copied");
        if (!field) { return; }
        field.select();
        var done = function () { if (said) { said.textContent = "Copied"; } };
        if (navigator.clipboard && navigator.clipboard.writeText) {
          navigator.clipboard.writeText(field.value).then(done, function () {
            if (said) { said.textContent = "Selected: press Ctrl+C"; }
          });
        } else {
          try { document.execCommand("copy"); done(); } catch (e) { if (said) { said.textContent = "Selected: press Ctrl+C"; } }
        }
      });
    }
  }
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", bind); } else { bind(); }
})();
