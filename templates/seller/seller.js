// The seller pages' script. The connect page opens amoCRM's consent in a popup and shows what the popup
// reports; the result page, inside that popup, reports every outcome to its opener and closes.
(function () {
  'use strict';
  var data = document.getElementById('data');
  if (!data) { return; }
  var d = data.dataset;
  var SOURCE = 'amocrm-connector';

  function byId(id) { return document.getElementById(id); }
  function text(id) { var el = byId(id); return el ? el.textContent : ''; }

  // The status card as the page shows it, so the opener can show the same truth.
  function card() {
    return {
      host: text('current-host'),
      account_id: text('current-id'),
      since: text('current-since'),
      status_text: text('current-status'),
      status_class: byId('current-status') ? byId('current-status').className : ''
    };
  }

  function result() {
    if (window.opener && !window.opener.closed) {
      window.opener.postMessage({
        source: SOURCE, status: d.status, title: d.title, message: d.message,
        settings_url: d.settingsUrl || '', retry_url: d.retryUrl || '', card: card()
      }, d.origin);
      window.close();
    } else if (d.status === 'connected' && d.returnUrl) {
      window.location.href = d.returnUrl;
    }
  }

  function showCard(c) {
    if (!c) { return; }
    byId('current-host').textContent = c.host || '';
    byId('current-id').textContent = c.account_id || '';
    byId('current-account').hidden = !c.host;
    byId('current-since').textContent = c.since || '';
    byId('current-since-row').hidden = !c.since;
    var status = byId('current-status');
    status.textContent = c.status_text || '';
    status.className = c.status_class || '';
  }

  function connect() {
    var button = byId('connect');
    var retry = byId('result-retry');
    var popup = null;
    var timer = null;
    var answered = false;

    function report(ok, title, message) {
      byId('waiting').hidden = true;
      byId('result').hidden = false;
      var heading = byId('result-title');
      heading.textContent = title;
      heading.className = ok ? 'ok' : 'bad';
      byId('result-text').textContent = message;
      retry.hidden = ok;
      button.hidden = ok;
      byId('fallback').hidden = ok;
    }

    // A popup closed without a word: the seller closed it before amoCRM sent them back. A message the
    // popup posted just before closing may still be queued, so it gets its turn first.
    function watch() {
      clearInterval(timer);
      timer = setInterval(function () {
        if (!popup || !popup.closed) { return; }
        clearInterval(timer);
        timer = null;
        setTimeout(function () {
          if (!answered) { report(false, d.errorTitle, d.closedText); }
        }, 300);
      }, 400);
    }

    function open(ev) {
      var w = 520, h = 680;
      var left = (screen.width - w) / 2, top = (screen.height - h) / 2;
      var opened = window.open(button.dataset.popup, 'amocrm_connect',
        'width=' + w + ',height=' + h + ',left=' + left + ',top=' + top);
      if (!opened) { return; }
      ev.preventDefault();
      popup = opened;
      answered = false;
      byId('result').hidden = true;
      byId('waiting').hidden = false;
      watch();
    }

    button.addEventListener('click', open);
    retry.addEventListener('click', open);

    window.addEventListener('message', function (ev) {
      if (ev.origin !== d.origin || !ev.data || ev.data.source !== SOURCE) { return; }
      answered = true;
      clearInterval(timer);
      var m = ev.data;
      var ok = m.status === 'connected';
      showCard(m.card);
      if (ok && d.returnUrl) { window.location.href = d.returnUrl; return; }
      // The consent link the popup spent is replaced by the fresh one it sent.
      if (!ok && typeof m.retry_url === 'string' && m.retry_url) { button.dataset.popup = m.retry_url; }
      report(ok, String(m.title || ''), String(m.message || ''));
      var settings = ok && typeof m.settings_url === 'string' ? m.settings_url : '';
      var link = byId('result-settings');
      link.hidden = true;
      if (settings.indexOf(d.origin + '/settings/') === 0) {
        link.href = settings;
        link.hidden = false;
      }
    });
  }

  if (d.page === 'result') { result(); } else if (d.page === 'connect') { connect(); }
})();
