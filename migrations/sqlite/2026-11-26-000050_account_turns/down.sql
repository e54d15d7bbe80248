DROP TABLE amocrm_account_turns;
