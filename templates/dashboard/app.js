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
